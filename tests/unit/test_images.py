"""Image checks and normalisation: broken files are rejected with a reason, unusual ones normalised."""

import io

import numpy as np
import pytest
from PIL import Image

from data_shards.images import ImagePolicy, ImageRejected, prepare_image


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def decoded(prepared) -> Image.Image:
    return Image.open(io.BytesIO(prepared.data))


def test_clean_rgb_jpeg_passes_through_byte_for_byte(tmp_path):
    path = save(Image.new("RGB", (20, 10), (200, 10, 10)), tmp_path / "a.jpg", quality=90)
    prepared = prepare_image(path, ImagePolicy())
    assert prepared.data == path.read_bytes()
    assert (prepared.format, prepared.width, prepared.height, prepared.changes) == ("jpeg", 20, 10, [])


@pytest.mark.parametrize(
    "reason, write",
    [
        ("missing_image", lambda p: None),
        ("zero_byte_image", lambda p: p.write_bytes(b"")),
        ("unreadable_image", lambda p: p.write_bytes(b"this is not an image at all" * 10)),
    ],
)
def test_broken_files_are_rejected_with_a_reason(tmp_path, reason, write):
    path = tmp_path / "x.jpg"
    write(path)
    with pytest.raises(ImageRejected) as caught:
        prepare_image(path, ImagePolicy())
    assert caught.value.reason == reason
    assert "x.jpg" in caught.value.detail


def test_truncated_jpeg_is_rejected(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    path = save(Image.fromarray(noise), tmp_path / "t.jpg", quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ImageRejected) as caught:
        prepare_image(path, ImagePolicy())
    assert caught.value.reason == "truncated_image"


def test_decompression_bomb_is_rejected_before_decoding(tmp_path):
    path = save(Image.new("L", (5000, 5000), 7), tmp_path / "bomb.png")
    with pytest.raises(ImageRejected) as caught:
        prepare_image(path, ImagePolicy(max_pixels=10_000_000))
    assert caught.value.reason == "image_too_large"
    assert "5000x5000" in caught.value.detail


@pytest.mark.parametrize("mode, change", [("CMYK", "mode_cmyk"), ("P", "mode_p"), ("L", "mode_l")])
def test_unusual_modes_become_rgb(tmp_path, mode, change):
    image = Image.new("RGB", (16, 16), (255, 0, 0)).convert(mode)
    path = save(image, tmp_path / ("x.jpg" if mode == "CMYK" else "x.png"))
    prepared = prepare_image(path, ImagePolicy())
    assert change in prepared.changes
    assert decoded(prepared).mode == "RGB"


def test_alpha_is_composited_on_white(tmp_path):
    image = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    prepared = prepare_image(save(image, tmp_path / "a.png"), ImagePolicy())
    assert decoded(prepared).getpixel((3, 3)) == (255, 255, 255)
    assert prepared.format == "png"


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    array = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    path = save(Image.fromarray(array), tmp_path / "deep.png")
    prepared = prepare_image(path, ImagePolicy())
    assert decoded(prepared).getpixel((0, 0)) == (127, 127, 127)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = image.getexif()
    exif[0x0112] = 6
    path = save(image, tmp_path / "rot.jpg", exif=exif)
    prepared = prepare_image(path, ImagePolicy())
    assert "exif_orientation" in prepared.changes
    assert (prepared.width, prepared.height) == (10, 30)


def test_reencode_bounds_the_longest_side(tmp_path):
    path = save(Image.new("RGB", (400, 200), (0, 255, 0)), tmp_path / "big.png")
    prepared = prepare_image(path, ImagePolicy(max_side=64, jpeg_quality=80))
    assert (prepared.format, prepared.width, prepared.height) == ("jpeg", 64, 32)
    assert "resized" in prepared.changes


def test_reencode_bounds_the_shortest_side_and_never_enlarges(tmp_path):
    photo = save(Image.new("RGB", (640, 480), (0, 255, 0)), tmp_path / "photo.jpg")
    prepared = prepare_image(photo, ImagePolicy(short_side=336))
    assert (prepared.format, prepared.width, prepared.height) == ("jpeg", 448, 336)
    assert "resized" in prepared.changes
    both = prepare_image(photo, ImagePolicy(short_side=336, max_side=400))
    assert (both.width, both.height) == (400, 300)
    small = prepare_image(save(Image.new("RGB", (300, 200)), tmp_path / "small.png"), ImagePolicy(short_side=336))
    assert (small.format, small.width, small.height, small.changes) == ("jpeg", 300, 200, ["reencoded"])


def test_policy_rejects_nonsense_values():
    with pytest.raises(ValueError, match="jpeg_quality"):
        ImagePolicy(jpeg_quality=0)
    with pytest.raises(ValueError, match="max_pixels"):
        ImagePolicy(max_pixels=0)
    with pytest.raises(ValueError, match="short_side"):
        ImagePolicy(short_side=4)
