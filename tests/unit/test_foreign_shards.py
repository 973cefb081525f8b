"""WebDataset tars written by others, indexed and streamed in place; and our shards read by `webdataset`."""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_shards.cli import main
from data_shards.foreign import Fields
from data_shards.sources.common import SourceOptions
from data_shards.stream import ShardStream, Skipped, StreamConfig

RED, BLUE = (220, 30, 30), (30, 30, 220)


def image_bytes(color: tuple[int, int, int], fmt: str = "JPEG", size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], pax: bool = False) -> None:
    """`pax`: float mtimes, as `tarfile.add` writes them, give every member a pax extension header."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT if pax else tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), time.time() if pax else 0
            tar.addfile(info, io.BytesIO(data))


def img2dataset_sample(key: str, caption: str, color=RED, ext: str = "jpg") -> list[tuple[str, bytes]]:
    fmt = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext]
    meta = json.dumps({"key": key, "caption": caption, "status": "success"}).encode()
    return [(f"{key}.{ext}", image_bytes(color, fmt)), (f"{key}.txt", caption.encode()), (f"{key}.json", meta)]


@pytest.fixture
def img2dataset(tmp_path: Path) -> Path:
    """Two tars as img2dataset writes them, one sample lacking its caption, and the files it leaves beside them."""
    folder = tmp_path / "laion"
    folder.mkdir()
    first = [*img2dataset_sample("000000000", "a red square"), *img2dataset_sample("000000001", "a blue one", BLUE)]
    write_tar(folder / "00000.tar", first)
    no_caption = [m for m in img2dataset_sample("000010001", "lost") if not m[0].endswith(".txt")]
    second = [*img2dataset_sample("000010000", "red png", ext="png"), *no_caption]
    write_tar(folder / "00001.tar", [*second, *img2dataset_sample("000010002", "blue webp", BLUE, "webp")], pax=True)
    (folder / "00000_stats.json").write_text("{}")
    (folder / "00000.parquet").write_bytes(b"PAR1")
    return folder


def tar_hashes(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("*.tar"))}


def streamed(folder: Path, **config) -> list:
    return list(ShardStream(folder, config=StreamConfig(shuffle=False, **config), rank=0, world_size=1))


def test_img2dataset_folder_indexed_in_place_and_streamed(img2dataset: Path, capsys) -> None:
    assert b"@PaxHeader" in (img2dataset / "00001.tar").read_bytes()  # read through pax extension headers
    before = tar_hashes(img2dataset)
    assert main(["index", str(img2dataset)]) == 0
    assert tar_hashes(img2dataset) == before
    out = capsys.readouterr().out
    assert "scanned 5 = indexed 4 + rejected 1" in out and "missing_caption" in out

    report = json.loads((img2dataset / "index_report.json").read_text())
    assert report["scanned"] == report["indexed"] + report["rejected"] == 5
    assert report["rejects"] == [
        {"tar": "00001.tar", "key": "000010001", "reason": "missing_caption", "detail": report["rejects"][0]["detail"]}
    ]
    samples = streamed(img2dataset)
    assert [s.key for s in samples] == ["000000000", "000000001", "000010000", "000010002"]
    assert [s.turns[0].text for s in samples] == [SourceOptions.caption_prompt] * 4
    assert [s.answers() for s in samples] == [["a red square"], ["a blue one"], ["red png"], ["blue webp"]]
    assert [s.images[0].format for s in samples] == ["jpeg", "jpeg", "png", "webp"]
    for sample, color in zip(samples, (RED, BLUE, RED, BLUE)):
        assert sample.placeholder_count() == len(sample.images) == 1
        assert max(abs(a - b) for a, b in zip(sample.images[0].decode().getpixel((8, 8)), color)) < 12


def test_fields_select_the_members(tmp_path: Path) -> None:
    key = "sample0"
    members = [(f"{key}.jpg", image_bytes(RED)), (f"{key}.png", image_bytes(BLUE, "PNG"))]
    write_tar(tmp_path / "a.tar", [*members, (f"{key}.caption", b"blue"), (f"{key}.txt", b"ignored")])
    fields = ["--fields", "caption=caption,image=png", "--caption-prompt", "<image>\nWhat colour?"]
    assert main(["index", str(tmp_path), *fields]) == 0
    (sample,) = streamed(tmp_path)
    assert sample.answers() == ["blue"] and sample.images[0].decode().getpixel((0, 0)) == BLUE
    assert sample.turns[0].text == "<image>\nWhat colour?"
    assert Fields.parse("image=jpg,image=png").image == ("jpg", "png")
    assert main(["index", str(tmp_path), "--fields", "label=cls"]) == 2


def test_repeated_keys_are_reported(tmp_path: Path, capsys) -> None:
    write_tar(tmp_path / "a.tar", [*img2dataset_sample("k1", "one"), *img2dataset_sample("k2", "two")])
    repeated = [*img2dataset_sample("k1", "again"), *img2dataset_sample("k3", "three"), *img2dataset_sample("k3", "x")]
    write_tar(tmp_path / "b.tar", repeated)
    assert main(["index", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "index_report.json").read_text())
    assert report["rejects_by_reason"] == {"duplicate_member": 1}  # k3 twice in a row: one run, members twice
    assert report["shared_keys"]["count"] == 1 and "'k1' in ['a.tar', 'b.tar']" in out
    assert [s.answers() for s in streamed(tmp_path)] == [["one"], ["two"], ["again"]]


def test_key_coming_back_later_in_a_tar_is_rejected(tmp_path: Path) -> None:
    members = [*img2dataset_sample("k1", "one"), *img2dataset_sample("k2", "two"), *img2dataset_sample("k1", "x")]
    write_tar(tmp_path / "a.tar", members)
    assert main(["index", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "index_report.json").read_text())
    assert [(r["key"], r["reason"]) for r in report["rejects"]] == [("k1", "duplicate_key")]


def test_names_the_seek_reader_cannot_read_back_are_rejected(tmp_path: Path) -> None:
    """A 131-character key fits ustar's prefix field (kept); a non-ASCII one lives in a pax header (rejected)."""
    long_key = "d" * 40 + "/" + "k" * 90
    members = [*img2dataset_sample(long_key, "long"), *img2dataset_sample("clé", "accent")]
    write_tar(tmp_path / "a.tar", members[:3], pax=False)
    write_tar(tmp_path / "b.tar", members[3:], pax=True)
    assert main(["index", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "index_report.json").read_text())
    assert [(r["key"], r["reason"]) for r in report["rejects"]] == [("clé", "unsupported_member_name")]
    assert [s.answers() for s in streamed(tmp_path)] == [["long"]]


def test_corrupt_tars_are_named_and_left_out(img2dataset: Path, capsys) -> None:
    """Truncated mid-member, truncated at a sample boundary, and a damaged header past the first sample."""
    assert main(["index", str(img2dataset)]) == 0
    second_sample = int(np.load(img2dataset / "offsets.npy")[4])  # 00000.tar: rows 0-2; 00001.tar: 3, 4, ...
    data = (img2dataset / "00001.tar").read_bytes()
    (img2dataset / "00002.tar").write_bytes(data[: second_sample + 700])
    (img2dataset / "00003.tar").write_bytes(data[:second_sample])
    (img2dataset / "00004.tar").write_bytes(data[:second_sample] + b"x" * 512 + data[second_sample + 512 :])
    assert main(["index", str(img2dataset)]) == 1
    err = capsys.readouterr().err
    for name in ("00002.tar", "00003.tar", "00004.tar"):
        assert f"error: {img2dataset / name}: corrupt tar, left out of the index" in err
    assert f"unreadable tar header at byte {second_sample}" in err and "no end-of-archive marker" in err
    index = json.loads((img2dataset / "index.json").read_text())
    assert [shard["name"] for shard in index["shards"]] == ["00000.tar", "00001.tar"]
    report = json.loads((img2dataset / "index_report.json").read_text())
    assert (report["scanned"], report["indexed"], report["rejected"]) == (5, 4, 1)
    assert sorted(report["corrupt_tars"]) == ["00002.tar", "00003.tar", "00004.tar"]


def test_validate_decodes_every_image(img2dataset: Path) -> None:
    write_tar(img2dataset / "00002.tar", [("bad.jpg", b"\xff\xd8 not a jpeg"), ("bad.txt", b"broken")])
    assert main(["index", str(img2dataset)]) == 0
    samples = streamed(img2dataset)
    assert len(samples) == 5 and isinstance(samples[-1], Skipped)  # found at read time without --validate
    assert main(["index", str(img2dataset), "--validate"]) == 0
    report = json.loads((img2dataset / "index_report.json").read_text())
    assert report["rejects_by_reason"] == {"missing_caption": 1, "unreadable_image": 1}
    assert not any(isinstance(sample, Skipped) for sample in streamed(img2dataset))


def test_user_errors_exit_2(tmp_path: Path, color_shards: Path, capsys) -> None:
    assert main(["index", str(tmp_path)]) == 2
    assert f"{tmp_path}: no *.tar files" in capsys.readouterr().err
    write_tar(tmp_path / "a.tar", [("k.jpg", image_bytes(RED))])
    assert main(["index", str(tmp_path)]) == 2
    assert "no sample could be indexed" in capsys.readouterr().err
    assert main(["index", str(color_shards / "train")]) == 2
    assert "built by `data_shards build`" in capsys.readouterr().err


def test_foreign_tars_read_through_pipe_commands_like_local_files(img2dataset: Path) -> None:
    assert main(["index", str(img2dataset)]) == 0
    names = [shard["name"] for shard in json.loads((img2dataset / "index.json").read_text())["shards"]]
    urls = [f"pipe:cat {img2dataset / name}" for name in names]
    config = StreamConfig(shuffle=False, decode=False)
    piped = ShardStream(urls, index=f"pipe:cat {img2dataset / 'index.json'}", config=config, rank=0, world_size=1)
    assert [s.key for s in piped] == [s.key for s in streamed(img2dataset, decode=False)]


def test_webdataset_reads_our_shards(color_shards: Path) -> None:
    import webdataset as wds

    from data_shards.sample import from_members

    split = color_shards / "train"
    index = json.loads((split / "index.json").read_text())
    urls = [str(split / shard["name"]) for shard in index["shards"]]
    read = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(read) == index["num_samples"]
    assert [r["__key__"] for r in read[:3]] == ["000000000", "000000001", "000000002"]
    assert {key for r in read for key in r if not key.startswith("__")} == {"json", "0.jpg"}
    ours = [sample.key for sample in streamed(split, decode=False)]
    assert [from_members(r).key for r in read] == ours


def test_trains_two_steps_on_indexed_foreign_shards(tiny_llava: Path, tmp_path: Path) -> None:
    from conftest import launch_training, train_losses

    folder = tmp_path / "laion"
    folder.mkdir()
    for number in range(2):
        colors = [(f"{number:05d}{i:04d}", RED if i % 2 else BLUE) for i in range(4)]
        members = [
            m for key, color in colors for m in img2dataset_sample(key, "red" if color == RED else "blue", color)
        ]
        write_tar(folder / f"{number:05d}.tar", members)
    assert main(["index", str(folder)]) == 0
    run = tmp_path / "run"
    overrides = [f"model.path={tiny_llava}", f"data.train={folder}", "data.val=", f"train.output_dir={run}"]
    settings = ["train.max_steps=2", "train.micro_batch_size=2", "train.log_every=1", "data.num_workers=0"]
    result = launch_training("in-process", 1, [*overrides, *settings, "deepspeed.zero_stage=0", "eval.at_start=false"])
    assert result.returncode == 0, result.stderr[-3000:]
    losses = train_losses(run)
    assert sorted(losses) == [1, 2] and all(math.isfinite(loss) for loss in losses.values())
