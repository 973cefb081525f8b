"""LLaVA-style JSON as published: absolute image paths inside the image root, one id shared by many
conversations, exact duplicates, text-only samples and records without an id."""

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import run_process_group
from PIL import Image

from data_shards.build import BuildConfig, build
from data_shards.index import shard_keys
from data_shards.stream import ShardStream, StreamConfig

RED, BLUE = (200, 30, 30), (30, 30, 200)


def save_image(path: Path, colour) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def conversation(sample_id, image, question="<image>\nWhat colour is it?", answer="red") -> dict:
    record = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if sample_id is not None:
        record["id"] = sample_id
    if image is not None:
        record["image"] = image
    return record


def build_source(tmp_path: Path, fmt: str, name: str, content: str, root: Path, **overrides):
    data = tmp_path / name
    data.write_text(content)
    out = tmp_path / f"out-{data.stem}"
    report = build(
        BuildConfig(input=data, out=out, format=fmt, image_root=root, workers=0, progress=False, **overrides)
    )
    return report, out


def build_llava(tmp_path: Path, records: list[dict], root: Path, name: str = "data.json", **overrides):
    return build_source(tmp_path, "llava", name, json.dumps(records), root, **overrides)


def written(out: Path) -> dict:
    stream = ShardStream(out / "train", config=StreamConfig(shuffle=False, on_corrupt="fail"), rank=0, world_size=1)
    return {sample.key: sample for sample in stream}


def rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]


def run_cli(*args) -> dict:
    result = run_process_group(
        [sys.executable, "-m", "data_shards", *map(str, args), "--no-progress"], dict(os.environ), timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads((Path(args[args.index("--out") + 1]) / "report.json").read_text())


def test_absolute_path_inside_the_root_is_accepted_and_is_that_image(tmp_path):
    root = tmp_path / "coco"
    red = save_image(root / "train2017" / "000000033471.png", RED)
    blue = save_image(root / "train2017" / "000000000009.png", BLUE)
    records = [
        conversation("abs", str(red)),
        conversation("rel", "train2017/000000000009.png", answer="blue"),
        conversation("dotted", f"{root}/val2017/../train2017/000000000009.png", answer="blue, again"),
    ]
    report, out = build_llava(tmp_path, records, root)
    assert (report["written"], report["rejected"]) == (3, 0)
    samples = written(out)
    assert samples["abs"].images[0].data == red.read_bytes()
    assert samples["rel"].images[0].data == samples["dotted"].images[0].data == blue.read_bytes()


def test_absolute_path_outside_the_root_is_rejected_naming_it(tmp_path):
    root = tmp_path / "coco"
    save_image(root / "a.png", RED)
    outside = save_image(tmp_path / "other" / "b.png", BLUE)
    sibling = save_image(tmp_path / "coco2" / "c.png", BLUE)  # shares the root's name as a prefix
    records = [
        conversation("good", "a.png"),
        conversation("outside", str(outside)),
        conversation("sibling", str(sibling)),
    ]
    report, out = build_llava(tmp_path, records, root)
    found = {r["key"]: r for r in rejects(out)}
    assert {key: r["reason"] for key, r in found.items()} == {
        "outside": "path_escapes_root",
        "sibling": "path_escapes_root",
    }
    assert str(outside) in found["outside"]["detail"] and str(sibling) in found["sibling"]["detail"]
    assert report["read"] == report["written"] + report["rejected"] == 3


def test_relative_escape_is_rejected_and_symlinks_under_the_root_are_not_followed(tmp_path):
    root = tmp_path / "data"
    save_image(root / "a.png", RED)
    outside = save_image(tmp_path / "other" / "b.png", BLUE)
    (root / "linked").symlink_to(tmp_path / "other", target_is_directory=True)
    records = [
        conversation("climb", "../other/b.png"),
        conversation("deep-climb", "sub/../../other/b.png"),
        conversation("through-link", "linked/b.png", answer="blue"),
        conversation("abs-through-link", f"{root}/linked/b.png", answer="blue, by its absolute path"),
        conversation("link-target", str(outside), answer="blue"),
        conversation("good", "a.png"),
    ]
    report, out = build_llava(tmp_path, records, root)
    assert {r["key"]: r["reason"] for r in rejects(out)} == {
        "climb": "path_escapes_root",
        "deep-climb": "path_escapes_root",
        "link-target": "path_escapes_root",
    }
    samples = written(out)
    assert samples["through-link"].images[0].data == samples["abs-through-link"].images[0].data == outside.read_bytes()


@pytest.mark.parametrize("fmt", ["messages", "manifest", "pairs", "coco"])
def test_every_file_source_takes_absolute_paths_inside_the_root(tmp_path, fmt):
    root = tmp_path / "images"
    inside, second = save_image(root / "in.png", RED), save_image(root / "in2.png", BLUE)
    outside = save_image(tmp_path / "elsewhere" / "out.png", BLUE)
    name, content = source_file(fmt, inside, second, outside)
    report, out = build_source(tmp_path, fmt, name, content, root)
    assert (report["written"], report["rejects_by_reason"]) == (1, {"path_escapes_root": 1})
    (sample,) = written(out).values()
    assert sample.images[0].data == inside.read_bytes()


def source_file(fmt: str, inside: Path, second: Path, outside: Path) -> tuple[str, str]:
    """One record with absolute paths inside the root, one with an absolute path outside it."""
    if fmt == "messages":

        def record(key, image):
            return {
                "id": key,
                "images": [str(image)],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
                    {"role": "assistant", "content": "red"},
                ],
            }

        return "data.json", json.dumps([record("in", inside), record("out", outside)])
    if fmt == "manifest":
        return "manifest.json", json.dumps({str(inside): "a red square", str(outside): "a blue square"})
    if fmt == "pairs":
        return "pairs.csv", f"img1,img2,label\n{inside},{second},First\n{outside},{second},Second\n"
    images = [
        {"id": 1, "file_name": str(inside), "width": 8, "height": 8},
        {"id": 2, "file_name": str(outside), "width": 8, "height": 8},
    ]
    return "coco.json", json.dumps({"images": images, "annotations": [], "categories": []})


def shared_id_records(root: Path) -> list[dict]:
    image = str(save_image(root / "000000033471.png", RED))
    return [
        conversation("000000033471", image),
        conversation("000000033471", image, question="<image>\nIs there a square?", answer="yes"),
        conversation("000000033471", image, question="<image>\nHow many squares?", answer="one"),
        conversation("other", image, question="<image>\nIs it a circle?", answer="no"),
    ]


def test_a_shared_id_with_different_content_is_kept_under_derived_keys(tmp_path):
    report, out = build_llava(tmp_path, shared_id_records(tmp_path / "img"), tmp_path / "img")
    assert (report["written"], report["rejected"]) == (4, 0)
    samples = written(out)
    assert samples["000000033471"].answers() == ["red"] and samples["other"].answers() == ["no"]
    derived = [key for key in samples if key.startswith("000000033471#")]
    assert len(derived) == 2 and all("." not in key and "/" not in key for key in derived)
    assert {samples[key].answers()[0] for key in derived} == {"yes", "one"}
    renamed = report["renamed_keys"]
    assert (renamed["count"], renamed["repeated_ids"]) == (2, 1)
    assert sorted(e["key"] for e in renamed["examples"]) == sorted(derived)
    assert {e["id"] for e in renamed["examples"]} == {"000000033471"}
    assert "written under derived keys: 2 (1 ids)" in (out / "report.md").read_text()


@pytest.mark.multiprocess
def test_derived_keys_do_not_depend_on_the_worker_count(tmp_path):
    data = tmp_path / "data.json"
    data.write_text(json.dumps(shared_id_records(tmp_path / "img")))
    keys = []
    for workers in (0, 2):
        out = tmp_path / f"out{workers}"
        run_cli(
            "build",
            "--format",
            "llava",
            "--input",
            data,
            "--image-root",
            tmp_path / "img",
            "--out",
            out,
            "--workers",
            workers,
        )
        keys.append([key for shard_keys_ in shard_keys(out / "train").values() for key in shard_keys_])
    assert keys[0] == keys[1] and len(set(keys[0])) == 4


def test_a_derived_key_never_takes_an_id_from_the_input(tmp_path):
    records = shared_id_records(tmp_path / "img")[:2]
    report, _ = build_llava(tmp_path, records, tmp_path / "img")
    (derived,) = [e["key"] for e in report["renamed_keys"]["examples"]]
    records.append(conversation(derived, None, question="Spell it.", answer="taken"))
    report, out = build_llava(tmp_path, records, tmp_path / "img", name="again.json")
    samples = written(out)
    assert samples[derived].answers() == ["taken"]
    assert samples[f"{derived}-2"].answers() == ["yes"]
    assert [e["key"] for e in report["renamed_keys"]["examples"]] == [f"{derived}-2"]


def test_exact_duplicates_are_dropped_or_kept_with_keep_duplicates(tmp_path):
    image = str(save_image(tmp_path / "img" / "a.png", RED))
    records = [
        conversation("a", image),
        conversation("a", image),
        conversation("a", image),
        conversation("b", image),
        conversation("c", image, answer="crimson"),
    ]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    common = ("build", "--format", "llava", "--input", data, "--image-root", tmp_path / "img", "--workers", "0")
    dropped = run_cli(*common, "--out", tmp_path / "dropped")
    assert (dropped["read"], dropped["written"], dropped["rejected"]) == (5, 2, 3)
    assert dropped["rejects_by_reason"] == {"duplicate_sample": 3} and dropped["kept_duplicates"] == 0
    assert sorted(written(tmp_path / "dropped")) == ["a", "c"]
    kept = run_cli(*common, "--out", tmp_path / "kept", "--keep-duplicates")
    assert (kept["read"], kept["written"], kept["rejected"]) == (5, 5, 0)
    assert kept["kept_duplicates"] == 3 and kept["options"]["keep_duplicates"] is True
    keys = sorted(written(tmp_path / "kept"))
    assert keys[0] == "a" and keys[3:] == ["b", "c"]
    assert keys[1].startswith("a#") and keys[2] == f"{keys[1]}-2"


def test_a_text_only_sample_is_accepted(tmp_path):
    root = tmp_path / "img"
    save_image(root / "a.png", RED)
    records = [conversation("picture", "a.png"), conversation("text", None, question="Say hi.", answer="hi")]
    report, out = build_llava(tmp_path, records, root)
    assert (report["written"], report["rejected"]) == (2, 0)
    text = written(out)["text"]
    assert text.images == [] and text.answers() == ["hi"]


def test_records_without_an_id_are_keyed_by_position(tmp_path):
    root = tmp_path / "img"
    image = str(save_image(root / "a.png", RED))
    records = [
        conversation(None, image),
        conversation("named", image, answer="scarlet"),
        {**conversation(None, image, answer="ruby"), "id": None},
    ]
    report, out = build_llava(tmp_path, records, root)
    assert (report["written"], report["rejected"]) == (3, 0)
    assert sorted(written(out)) == ["named", "rec0000000", "rec0000002"]
