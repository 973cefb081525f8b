"""The `sam` format: COCO RLE in numpy, the mask checks, SA-V / SA-1B / COCO readers (folder and zip),
the time split, and the synthetic SA-V export whose every defect the build names."""

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_shards.build import BuildConfig, build
from data_shards.cli import main
from data_shards.records import RawSample, Reject
from data_shards.sources import detect_format, open_source
from data_shards.sources.sam.masks import MaskError, check_annotated, measure, segmentation_mask
from data_shards.sources.sam.questions import BOX, LARGEST, REGION, VISIBLE, box_text, conversation, region
from data_shards.sources.sam.rle import RleError, counts_from_string, counts_to_string, decode, encode, polygon_mask
from data_shards.sources.sam.sav import frame_stride
from data_shards.split import SplitError, SplitSpec, assign_splits
from data_shards.split_time import temporal
from data_shards.stream import ShardStream, StreamConfig
from data_shards.synthetic import make_dataset

# ---- RLE ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "counts, text",
    [
        ([1, 3], "13"),  # runs read down columns, zeros first
        ([0, 1, 3], "013"),  # the first pixel set: a zero-length first run
        ([5, 2, 3, 1], "523O"),  # the 4th count is stored as 1 - 2 = -1: one group, sign bit set
        ([407040], "P`]<"),  # 848 x 480 zeros: four 5-bit groups, least significant first
    ],
)
def test_compressed_counts_match_hand_encoding(counts, text):
    assert counts_to_string(counts) == text
    assert counts_from_string(text) == counts


def test_decode_is_column_major_and_round_trips():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)  # flat in column order: 0, 1, 1, 1
    assert encode(mask, compressed=False) == {"size": [2, 2], "counts": [1, 3]}
    assert encode(mask) == {"size": [2, 2], "counts": "13"}
    assert (decode({"size": [2, 2], "counts": [1, 3]}) == mask).all()
    assert (decode({"size": [2, 2], "counts": b"13"}) == mask).all()
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (3, 7), (16, 9), (40, 33)]
    masks = [rng.random(shape) < p for shape in shapes for p in (0.0, 0.1, 0.5, 1.0)]
    for mask in masks:
        for compressed in (True, False):
            assert (decode(encode(mask, compressed)) == mask).all()


@pytest.mark.parametrize(
    "rle, message",
    [
        ({"size": [2, 2], "counts": [1, 2]}, "runs cover 3 pixels"),
        ({"size": [2, 2], "counts": "1 3"}, "outside the RLE alphabet"),
        ({"size": [2, 2], "counts": "1h"}, "ends inside a value"),  # 'h' = 56: a continuation group, then nothing
        ({"size": [2], "counts": [4]}, "size must be"),
        ({"size": [2, 2], "counts": 4}, "counts must be"),
    ],
)
def test_broken_rle_raises(rle, message):
    with pytest.raises(RleError, match=message):
        decode(rle)


def test_polygon_fills_pixel_centres_inside_and_on_the_outline():
    mask = polygon_mask([[0, 0, 4, 0, 4, 4, 0, 4]], 6, 6)
    assert mask.sum() == 25 and mask[:5, :5].all()


# ---- the per-annotation rules ---------------------------------------------------------------------------


def square(height=10, width=12, box=(2, 3, 6, 4)):
    """A mask with a filled rectangle (x, y, w, h), its RLE, bbox and area."""
    mask = np.zeros((height, width), dtype=bool)
    x, y, w, h = box
    mask[y : y + h, x : x + w] = True
    return mask, encode(mask), list(box), int(mask.sum())


def rule(segmentation, bbox, area, shape=(10, 12)):
    mask, polygon = segmentation_mask(segmentation, *shape, "f.json object 7")
    check_annotated(mask, polygon, bbox, area, shape, "f.json object 7")


def test_good_annotations_pass_with_justified_tolerances():
    _, rle, bbox, area = square()
    rule(rle, bbox, area)
    rule(rle, bbox, area + 1)  # 1 px + 2%: rounding of exporters that measure a resized mask
    rule(rle, [1.5, 2.5, 7, 5], area)  # float boxes a pixel wider
    rule([[2, 3, 8, 3, 8, 7, 2, 7]], [2, 3, 6, 4], 24.0)  # polygon: geometric area 24, raster 35 (boundary pixels)


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda rle, bbox, area: (encode(np.zeros((10, 13), bool)), bbox, area), "mask_size_mismatch"),
        (lambda rle, bbox, area: ({"size": [10, 12], "counts": rle["counts"][:-1]}, bbox, area), "malformed_mask"),
        (lambda rle, bbox, area: (encode(np.zeros((10, 12), bool)), bbox, area), "empty_mask"),
        (lambda rle, bbox, area: (rle, [10, 3, 6, 4], area), "bbox_outside_image"),
        (lambda rle, bbox, area: (rle, [2, 3, 3, 4], area), "mask_outside_bbox"),
        (lambda rle, bbox, area: (rle, bbox, area * 2), "mask_area_mismatch"),
        (lambda rle, bbox, area: ([[1, 2, 3]], bbox, area), "malformed_mask"),
    ],
)
def test_each_rule_rejects_with_a_reason_naming_file_and_object(change, reason):
    _, rle, bbox, area = square()
    with pytest.raises(MaskError) as error:
        rule(*change(rle, bbox, area))
    assert error.value.reason == reason and "f.json object 7" in error.value.detail


# ---- readers --------------------------------------------------------------------------------------------


def records(path: Path, image_root: Path | None = None) -> list:
    return list(open_source("sam", path, image_root).records())


def samples(items: list) -> dict[str, RawSample]:
    return {item.key: item for item in items if isinstance(item, RawSample)}


def test_frame_stride_from_the_json():
    assert frame_stride({"video_frame_count": 483.0, "masklet": [[]] * 121}) == 4  # SA-V's sav_000001
    assert frame_stride({"video_frame_count": 10, "masklet": [[]] * 10}) == 1
    assert frame_stride({"masklet": [[]] * 10}) == 4  # no frame count: SA-V's documented every-4th


def test_sav_reader_on_the_synthetic_export(tmp_path):
    dataset = make_dataset("sam", tmp_path, n=10, seed=3)
    read = samples(records(dataset.input))
    assert len(read) == dataset.num_records == 10 and not dataset.defects
    for key, sample in read.items():
        video, frame = sample.extra["video_id"], sample.extra["frame_index"]
        assert key == f"{video}_{frame:05d}" and frame % 4 == 0 and sample.group == video
        assert sample.image_refs == [f"JPEGImages_24fps/{video}/{frame:05d}.jpg"]
        assert sample.turns[1].text == str(len(sample.extra["object_ids"]))
    manual = json.loads((tmp_path / "sav_train/sav_000/sav_000002_manual.json").read_text())
    late = [i for i, first in enumerate(manual["masklet_first_appeared_frame"]) if first == 1]
    if late:  # a track that appears in the second annotated frame: absent (an empty RLE) in the first
        assert late[0] not in read["sav_000002_00000"].extra["object_ids"]
        assert late[0] in read["sav_000002_00004"].extra["object_ids"]


def write_frame(path: Path, value: int, size=(12, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, 40, 90)).save(path)


def write_video_json(path: Path, masklet: list, frame_count: int, video_id: str = "vid") -> None:
    ids = list(range(len(masklet[0])))
    document = {"video_id": video_id, "video_frame_count": frame_count, "video_height": 8, "video_width": 12}
    document.update(masklet=masklet, masklet_id=ids, masklet_first_appeared_frame=[0] * len(ids))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_frames_extracted_at_annotation_rate_and_duplicate_frames(tmp_path):
    """Frames numbered 0..n-1 (a 6 fps extraction) map to masklet entries one to one; frame_index stays 4i.
    A byte-identical frame with other masks is kept and noted; a frame without visible objects is noted."""
    masks = [square(8, 12, (1, 1, 3, 3))[1], square(8, 12, (6, 2, 4, 4))[1], encode(np.zeros((8, 12), bool))]
    write_video_json(tmp_path / "vid_manual.json", [[m] for m in masks], frame_count=12)
    for index, value in enumerate((10, 10, 200)):
        write_frame(tmp_path / "frames" / "vid" / f"{index:05d}.png", value)
    read = samples(records(tmp_path))
    assert sorted(read) == ["vid_00000", "vid_00004", "vid_00008"]
    assert read["vid_00004"].image_refs == ["frames/vid/00001.png"]
    assert read["vid_00004"].extra["notes"] == ["duplicate_frame"]
    assert read["vid_00004"].extra["duplicate_of"] == "vid_00000"
    assert read["vid_00008"].extra["notes"] == ["no_objects"] and read["vid_00008"].turns[1].text == "0"


def test_sav_frame_size_and_missing_frames(tmp_path):
    write_video_json(tmp_path / "vid_manual.json", [[square(8, 12, (1, 1, 3, 3))[1]]] * 2, frame_count=8)
    write_frame(tmp_path / "vid" / "00000.jpg", 10, size=(8, 12))  # height and width swapped
    read = records(tmp_path)
    rejects = {r.key: r for r in read if isinstance(r, Reject)}
    assert (
        rejects["vid_00000"].reason == "mask_size_mismatch" and "vid/00000.jpg is 12x8" in rejects["vid_00000"].detail
    )
    assert samples(read)["vid_00004"].image_refs == ["vid/00004.jpg"]  # absent: the image checks reject it


def test_sav_malformed_header_and_entries(tmp_path):
    rle = square(8, 12, (1, 1, 3, 3))[1]
    write_video_json(tmp_path / "a" / "vid_manual.json", [[rle], [rle, rle]], frame_count=8)
    write_video_json(tmp_path / "b" / "other_manual.json", [[rle]], frame_count=4, video_id="other")
    broken = json.loads((tmp_path / "b" / "other_manual.json").read_text())
    del broken["video_height"]
    (tmp_path / "b" / "other_manual.json").write_text(json.dumps(broken))
    rejects = {r.key: r for r in records(tmp_path) if isinstance(r, Reject)}
    assert rejects["vid_00004"].reason == "malformed_record" and "masklet[1]" in rejects["vid_00004"].detail
    assert rejects["other"].reason == "malformed_record" and "other_manual.json" in rejects["other"].detail
    assert "video_height" in rejects["other"].detail


def sa1b_document(masks: list[np.ndarray], **changes) -> dict:
    annotations = []
    for number, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1]
        annotation = {"id": 900 + number, "segmentation": encode(mask), "bbox": bbox, "area": int(mask.sum())}
        annotations.append({**annotation, "predicted_iou": 0.9, "stability_score": 0.97, "point_coords": [[1, 1]]})
    image = {"image_id": 5, "width": 12, "height": 8, "file_name": "sa_5.jpg"}
    return {"image": image, "annotations": annotations, **changes}


def test_sa1b_reader(tmp_path):
    first, second = square(8, 12, (0, 0, 4, 3))[0], square(8, 12, (7, 4, 5, 4))[0]
    (tmp_path / "sa_5.json").write_text(json.dumps(sa1b_document([first, second])))
    write_frame(tmp_path / "sa_5.jpg", 50)
    assert detect_format(tmp_path) == "sam" and detect_format(tmp_path / "sa_5.json") == "sam"
    (sample,) = records(tmp_path / "sa_5.json")
    assert sample.key == "sa_5" and sample.image_refs == ["sa_5.jpg"] and sample.group is None
    assert sample.extra["object_ids"] == [900, 901] and "frame_index" not in sample.extra
    assert sample.turns[1].text == "2"
    bad = sa1b_document([first])
    bad["annotations"][0]["bbox"] = [0, 0, 2, 3]
    (tmp_path / "sa_5.json").write_text(json.dumps(bad))
    (reject,) = records(tmp_path / "sa_5.json")
    assert reject.reason == "mask_outside_bbox" and "sa_5.json image 5 annotation 900" in reject.detail


def coco_document() -> dict:
    """Eleven cats and one dog: a 11:1 category imbalance; polygons, list RLE and string RLE."""
    images = [{"id": k, "file_name": f"images/{k}.png", "width": 12, "height": 8} for k in range(1, 5)]
    cat = {"category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]], "bbox": [1, 1, 3, 3], "area": 9}
    annotations = [{**cat, "id": k, "image_id": 1 + k % 4} for k in range(11)]
    mask, rle, bbox, area = square(8, 12, (6, 2, 4, 4))
    crowd = {"size": rle["size"], "counts": encode(mask, compressed=False)["counts"]}
    annotations.append({"id": 50, "image_id": 1, "category_id": 2, "segmentation": crowd, "bbox": bbox, "area": area})
    categories = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def test_coco_masks_and_category_imbalance_flag(tmp_path):
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "instances.json").write_text(json.dumps(coco_document()))
    for k in range(1, 5):
        write_frame(raw / "images" / f"{k}.png", 20 * k)
    assert detect_format(raw / "instances.json") == "coco"  # the plain coco reader unless --format sam
    report = build(BuildConfig(input=raw, out=tmp_path / "out", format="sam", workers=0, progress=False))
    assert report["read"] == report["written"] == 4
    annotations = report["stats"]["annotations"]
    assert annotations["categories"] == {"cat": 11, "dog": 1} and annotations["category_imbalance_flagged"]
    assert "above 10:1" in (tmp_path / "out" / "report.md").read_text()
    first = samples(records(raw))["instances_img1"]
    assert first.label == "cat" and sorted(first.extra["categories"]) == ["cat", "cat", "cat", "dog"]


def test_questions_answer_from_the_masks():
    upper_left = measure(3, "object 3", square(30, 30, (0, 0, 6, 6))[0])
    lower_right = measure(8, "object 8", square(30, 30, (18, 20, 12, 10))[0])
    assert region(upper_left, 30, 30) == "upper left" and region(lower_right, 30, 30) == "lower right"
    assert box_text(lower_right, 30, 30) == "[0.60, 0.67, 1.00, 1.00]"
    turns = conversation([upper_left, lower_right], 30, 30, "frame", named=False)
    assert turns[0].text.startswith("<image>\n") and turns[1].text == "2" and len(turns) == 8
    for question, answer in zip(turns[2::2], turns[3::2]):
        target = upper_left if "object 3" in question.text else lower_right
        if any(question.text == t.format(name=target.name, thing="frame") for t in BOX):
            assert answer.text == box_text(target, 30, 30)
        elif any(question.text == t.format(name=target.name, thing="frame") for t in REGION):
            assert answer.text == region(target, 30, 30)
        elif question.text in VISIBLE:
            assert answer.text == "object 3, object 8"
        else:
            assert question.text in LARGEST and answer.text == "object 8"
    assert conversation([upper_left, lower_right], 30, 30, "frame", named=False) == turns  # seeded by content


# ---- builds: defects, zip, time split, CLI --------------------------------------------------------------


def build_sam(dataset, out: Path, **overrides) -> dict:
    config = dict(input=dataset.input, out=out, format="sam", workers=0, progress=False)
    return build(BuildConfig(**{**config, **overrides}))


def rejects_of(out: Path) -> dict[str, Reject]:
    return {r["key"]: Reject(**r) for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}


def streamed(split_dir: Path) -> list:
    return list(ShardStream(split_dir, config=StreamConfig(shuffle=False), rank=0, world_size=1))


def test_synthetic_defects_are_each_named_in_the_report(tmp_path):
    dataset = make_dataset("sam", tmp_path / "raw", n=12, seed=1, defects=True)
    report = build_sam(dataset, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["read"] == saved["written"] + saved["rejected"] == dataset.num_records
    expected = sorted(dataset.defects.values())
    assert expected == sorted(
        ["mask_size_mismatch", "malformed_mask", "empty_mask", "duplicate_sample"]
        + ["mask_area_mismatch", "mask_outside_bbox", "bbox_outside_image"]
    )
    assert saved["rejects_by_reason"] == {reason: expected.count(reason) for reason in expected}
    rejects = rejects_of(tmp_path / "out")
    assert {key: r.reason for key, r in rejects.items()} == dataset.defects
    for key, reject in rejects.items():
        if reject.reason != "duplicate_sample":
            assert ".json" in reject.detail and ("object" in reject.detail or "annotation" in reject.detail), key
    assert saved["stats"]["annotations"]["notes"] == {"no_objects": 1}
    assert saved["stats"]["annotations"]["note_examples"] == {"no_objects": list(dataset.unusual)}
    assert report["stats"]["classes"] == {}  # SA-V and SA-1B masks are class-agnostic


def test_zip_input_reads_members_and_unpacks_only_referenced_frames(tmp_path, monkeypatch):
    dataset = make_dataset("sam", tmp_path / "raw", n=8, seed=2, defects=True)
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(dataset.input.rglob("*")):
            if path.is_file():
                handle.write(path, Path("nested") / path.relative_to(dataset.input))
    assert detect_format(archive) == "sam"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    cache = open_source("sam", archive).image_root  # by default, frames go to a cache folder per archive
    assert cache.is_dir() and cache.parent == tmp_path / "temp" / "shardtune-zip"
    from_folder = build_sam(dataset, tmp_path / "out-folder")
    unpacked = tmp_path / "unpacked"
    unpacked.mkdir()
    from_zip = build_sam(dataset, tmp_path / "out-zip", input=archive, image_root=unpacked)
    for field in ("read", "written", "rejected", "rejects_by_reason"):
        assert from_zip[field] == from_folder[field]
    written = sorted(p.relative_to(unpacked).as_posix() for p in unpacked.rglob("*") if p.is_file())
    referenced = sorted(ref for sample in samples(records(archive, unpacked)).values() for ref in sample.image_refs)
    frames_in_zip = sum(1 for name in zipfile.ZipFile(archive).namelist() if name.endswith(".jpg"))
    assert written == referenced and len(written) < frames_in_zip  # not the unannotated or rejected frames
    assert all(ref.startswith("nested/JPEGImages_24fps/") for ref in written)


def test_temporal_split_orders_each_video_and_drops_the_gap():
    groups = ["a"] * 10 + ["b"] * 4
    frames = [4 * i for i in range(10)] + [12, 0, 8, 4]  # b out of order
    parts = temporal(groups, frames, [0.5, 0.5], gap=4)
    assert parts[:10] == [0, 0, 0, 0, 0, None, 1, 1, 1, 1]  # frame 20 is within 4 of frame 16
    assert parts[10:] == [1, 0, None, 0]  # b: 0, 4 train; 8 dropped; 12 val
    names = assign_splits([None] * 14, groups, SplitSpec.parse("train=0.5,val=0.5", "time", gap=0), 0, frames)
    assert names[:10] == ["train"] * 5 + ["val"] * 5
    with pytest.raises(SplitError, match="frame_index"):
        temporal(["a", "b"], [0, None], [1.0], gap=0)
    with pytest.raises(SplitError, match="no folds"):
        SplitSpec.parse("train=1", "time", folds=3, fold=0)


def test_time_split_build_keeps_each_boundary_gapped(tmp_path):
    dataset = make_dataset("sam", tmp_path / "raw", n=24, seed=4, defects=True)
    split = SplitSpec.parse("train=0.6,val=0.4", "time", gap=8)
    report = build_sam(dataset, tmp_path / "out", split=split)
    assert report["read"] == report["written"] + report["rejected"]
    gap = [r for r in rejects_of(tmp_path / "out").values() if r.reason == "time_gap"]
    assert gap and report["rejects_by_reason"]["time_gap"] == len(gap)
    frames: dict[str, dict[str, list[int]]] = {}
    for name in ("train", "val"):
        index = json.loads((tmp_path / "out" / name / "index.json").read_text())
        assert index["options"]["split"]["time_gap"] == 8
    for name in ("train", "val"):
        for sample in streamed(tmp_path / "out" / name):
            frames.setdefault(sample.group, {}).setdefault(name, []).append(sample.extra["frame_index"])
    assert sum("train" in parts and "val" in parts for parts in frames.values()) >= 2
    for video, parts in frames.items():
        if "val" in parts and "train" in parts:
            assert max(parts["train"]) + 8 < min(parts["val"]), video


def test_group_split_keeps_each_video_in_one_split(tmp_path):
    dataset = make_dataset("sam", tmp_path / "raw", n=24, seed=5)
    build_sam(dataset, tmp_path / "out", split=SplitSpec.parse("train=0.5,val=0.5", "group"))
    splits_of: dict[str, set[str]] = {}
    for name in ("train", "val"):
        for sample in streamed(tmp_path / "out" / name):
            splits_of.setdefault(sample.group, set()).add(name)
    assert len(splits_of) == 3 and all(len(names) == 1 for names in splits_of.values())
    assert {name for names in splits_of.values() for name in names} == {"train", "val"}


def test_cli_synth_and_time_split_build(tmp_path, capsys):
    assert main(["synth", "--format", "sam", "--out", str(tmp_path / "raw"), "--n", "8"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "sam"
    arguments = ["build", "--input", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--workers", "0"]
    arguments += ["--split", "train=0.5,val=0.5", "--split-by", "time", "--time-gap", "4", "--no-progress"]
    assert main(arguments) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["source"]["format"] == "sam" and report["options"]["split"]["time_gap"] == 4
    assert report["read"] == report["written"] + report["rejected"] == 8
