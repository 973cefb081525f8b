"""The oxford_flowers102 release (MAT 5 files, its own split) and Hugging Face parquet / save_to_disk datasets:
readers, streaming, rejects named file:row, and whole builds whose counts reconcile."""

import base64
import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_shards.build import BuildConfig, build
from data_shards.cli import main
from data_shards.records import RawSample, Reject, SourceError
from data_shards.sample import IMAGE_TOKEN
from data_shards.sources import SourceOptions, detect_format, open_source
from data_shards.sources import parquet as parquet_reader
from data_shards.sources.mat5 import read_mat, read_vector
from data_shards.split import SplitError, SplitSpec, source_splits
from data_shards.synthetic import make_dataset
from data_shards.synthetic.flowers import NAMES_FILE, write_mat
from data_shards.synthetic.parquet import image_type, write_table

# Written by scipy.io.savemat (an independent writer): `valid` = [3, 1, 2] and `labels` = [1, 2, 2], 1x3 doubles.
SCIPY_PLAIN = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFdlZCBEZWMgIDIgMDA6MTY6MjYgMjAyNgAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0OAAAAUAAAAAYAAAAIAAAABgAAAAAAAAAFAAAACAAAAAEAAAADAAAA"
    "AQAAAAUAAAB2YWxpZAAAAAkAAAAYAAAAAAAAAAAACEAAAAAAAADwPwAAAAAAAABADgAAAFAAAAAGAAAACAAAAAYAAAAAAAAABQAAAAgAAAABAAAA"
    "AwAAAAEAAAAGAAAAbGFiZWxzAAAJAAAAGAAAAAAAAAAAAPA/AAAAAAAAAEAAAAAAAAAAQA=="
)
SCIPY_COMPRESSED = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFdlZCBEZWMgIDIgMDA6MTY6MjYgMjAyNgAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0PAAAANAAAAHic42NgYAgAYjYg5oDSIMAK5TMCMTOUBomVJeZkpgBp"
    "TiCWYIABDgcI/cEeKuAAAI07BHIPAAAAMwAAAHic42NgYAgAYjYg5oDSIMAK5TMCMTOUBsnlJCal5hQzMHAC2RIMMPDBHspwgNEAoYgEzg=="
)
SCIPY_CELL = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFdlZCBEZWMgIDIgMDA6MTY6MjYgMjAyNgAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0OAAAAcAAAAAYAAAAIAAAAAQAAAAAAAAAFAAAACAAAAAEAAAABAAAA"
    "AQAAAAcAAABjZWxsdmFyAA4AAAA4AAAABgAAAAgAAAAGAAAAAAAAAAUAAAAIAAAAAQAAAAEAAAABAAAAAAAAAAkAAAAIAAAAAAAAAAAA8D8="
)


def records(fmt, path, **options):
    return list(open_source(fmt, path, options=SourceOptions(**options)).records())


def run_build(dataset, out, split=None, **options):
    config = BuildConfig(
        input=dataset.input,
        out=out,
        format=dataset.format,
        split=split or SplitSpec(by="source"),
        options=SourceOptions(**options),
        workers=0,
        progress=False,
    )
    report = build(config)
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert report["read"] == report["written"] + report["rejected"] == dataset.num_records
    assert {r["key"]: r["reason"] for r in rejects} == dataset.defects
    assert report["rejects_by_reason"] == dict(Counter(dataset.defects.values()))
    return report, rejects


# MAT 5 files


@pytest.mark.parametrize("text", [SCIPY_PLAIN, SCIPY_COMPRESSED], ids=["plain", "compressed"])
def test_mat_reader_reads_files_scipy_wrote(tmp_path, text):
    path = tmp_path / "setid.mat"
    path.write_bytes(base64.b64decode(text))
    variables = read_mat(path)
    assert variables["valid"].shape == (1, 3) and variables["valid"].dtype == np.float64
    assert read_vector(path, "valid").tolist() == [3, 1, 2] and read_vector(path, "labels").tolist() == [1, 2, 2]


@pytest.mark.parametrize(
    "storage, compress, order", [("u1", True, "<"), ("u2", True, ">"), ("f8", False, "<"), ("i4", False, ">")]
)
def test_mat_reader_reads_matlab_layouts(tmp_path, storage, compress, order):
    """MATLAB stores whole doubles as uint8/uint16, compresses by default; a 1-letter name is a small element."""
    path = tmp_path / "m.mat"
    write_mat(path, {"labels": np.arange(1, 201), "x": np.array([7])}, {"labels": storage, "x": "u1"}, compress, order)
    variables = read_mat(path)
    assert variables["labels"].dtype == np.float64 and variables["labels"].shape == (1, 200)
    assert read_vector(path, "labels").tolist() == list(range(1, 201)) and variables["x"].tolist() == [[7.0]]


def test_mat_reader_names_the_file_and_the_problem(tmp_path):
    cases = {
        "cell.mat": (base64.b64decode(SCIPY_CELL), "variable 'cellvar' is a cell array"),
        "hdf5.mat": (b"MATLAB 7.3 MAT-file".ljust(512, b" ") + b"\x89HDF", r"v7\.3 \(HDF5\)"),
        "text.mat": (b"labels = [1 2 3]\n", "not a MATLAB 5 MAT-file"),
        "cut.mat": (base64.b64decode(SCIPY_PLAIN)[:200], "the data ends first"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SourceError, match=message) as error:
            read_mat(tmp_path / name)
        assert name in str(error.value)
    (tmp_path / "plain.mat").write_bytes(base64.b64decode(SCIPY_PLAIN))
    with pytest.raises(SourceError, match=r"plain.mat: no variable 'trnid' \(it holds \['labels', 'valid'\]\)"):
        read_vector(tmp_path / "plain.mat", "trnid")


# flowers102


@pytest.fixture
def flowers(tmp_path):
    return make_dataset("flowers102", tmp_path / "flowers", n=30, seed=0)


def test_flowers_reader_keeps_the_release_split_and_names(flowers):
    root = flowers.input
    labels = read_vector(root / "imagelabels.mat", "labels").astype(int)
    split_of = {int(i): split for var, split in [("trnid", "train"), ("valid", "val"), ("tstid", "test")]
                for i in read_vector(root / "setid.mat", var)}  # fmt: skip
    names = (root / NAMES_FILE).read_text().splitlines()
    samples = records("flowers102", root, class_names=root / NAMES_FILE, class_choices=True)
    assert len(samples) == 30 == len(labels) and len(names) == 3
    for image_id, sample in enumerate(samples, start=1):
        assert sample.key == f"image_{image_id:05d}" and sample.image_refs == [f"jpg/image_{image_id:05d}.jpg"]
        assert sample.label == names[labels[image_id - 1] - 1] == sample.turns[1].text
        assert sample.turns[0].text == "<image>\nWhat kind of flower is this?"
        assert sample.split == split_of[image_id] and sample.extra == {"choices": names}
    assert Counter(s.split for s in samples) == {"train": 12, "val": 9, "test": 9}
    plain = records("flowers102", root, class_question="<image>\nWhich?")
    assert plain[0].label == "class_001" and plain[0].turns[0].text == "<image>\nWhich?" and plain[0].extra == {}


def test_flowers_reader_refuses_mismatched_counts(flowers):
    root = flowers.input
    (root / "short.txt").write_text("red flower\ngreen flower\n")
    with pytest.raises(SourceError, match=r"short.txt: 2 names, but imagelabels.mat has labels 1..3"):
        records("flowers102", root, class_names=root / "short.txt")
    (root / "jpg" / "image_00031.jpg").write_bytes((root / "jpg" / "image_00001.jpg").read_bytes())
    with pytest.raises(SourceError, match="1 images beyond the 30 labelled ones"):
        records("flowers102", root)
    (root / "jpg" / "image_00031.jpg").unlink()
    write_mat(root / "setid.mat", {"trnid": np.arange(1, 20), "valid": np.arange(19, 25), "tstid": np.arange(25, 31)})
    with pytest.raises(SourceError, match="setid.mat: image 19 is in both train and val"):
        records("flowers102", root)
    write_mat(root / "setid.mat", {"trnid": np.arange(1, 20), "valid": np.arange(20, 25), "tstid": np.arange(26, 31)})
    with pytest.raises(SourceError, match=r"setid.mat: 1 of 30 images are in no split \(first ids: \[25\]\)"):
        records("flowers102", root)
    write_mat(root / "imagelabels.mat", {"labels": np.array([0] * 30)})
    with pytest.raises(SourceError, match="imagelabels.mat: 'labels' must hold whole numbers"):
        records("flowers102", root)


def test_flowers_build_through_the_cli_keeps_train_val_test(tmp_path, capsys):
    dataset = make_dataset("flowers102", tmp_path / "raw", n=30, seed=0, defects=True)
    out = tmp_path / "out"
    argv = ["build", "--input", str(dataset.input), "--out", str(out), "--workers", "0", "--no-progress"]
    assert detect_format(dataset.input) == "flowers102"
    assert main([*argv, "--class-names", str(dataset.input / NAMES_FILE)]) == 0
    assert "splits as the source gives them (--split-by source), not re-split" in capsys.readouterr().out
    assert "splits as the source gives them (not re-split)" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["split"]["by"] == "source"
    assert {name: s["samples"] for name, s in report["splits"].items()} == {"train": 12, "val": 9, "test": 9}
    assert report["read"] == 32 and report["rejects_by_reason"] == {"missing_image": 1, "truncated_image": 1}
    assert all((out / name / "index.json").is_file() for name in ("train", "val", "test"))
    assert main([*argv, "--overwrite", "--split", "train=0.5,val=0.5"]) == 0
    assert set(json.loads((out / "report.json").read_text())["splits"]) == {"train", "val"}


def test_source_split_needs_a_split_on_every_sample():
    with pytest.raises(SplitError, match=r"1 samples have no split from their source \(first: a.json\[1\]\)"):
        source_splits(["x", "y"], ["train", None], ["a.json[0]", "a.json[1]"])
    assert list(source_splits([1, 2, 3], ["test", "extra", "train"], ["o"] * 3)) == ["train", "test", "extra"]
    with pytest.raises(SplitError, match="takes no --split ratios"):
        SplitSpec.parse("train=0.9,val=0.1", by="source")


# parquet and save_to_disk


def test_cauldron_rows_become_samples_with_their_images(tmp_path):
    dataset = make_dataset("cauldron", tmp_path / "cauldron", n=20, seed=0)
    assert detect_format(dataset.input) == "parquet"
    samples = records("parquet", dataset.input)
    files = sorted((dataset.input / "data").glob("*.parquet"))
    rows = [row for file in files for row in pq.read_table(file).to_pylist()]
    assert len(samples) == len(rows) == 20 and all(isinstance(s, RawSample) for s in samples)
    image_root = dataset.input.with_name("cauldron.images")
    for index, (sample, row) in enumerate(zip(samples, rows)):
        file, position = (files[0], index) if index < 10 else (files[1], index - 10)
        assert sample.origin == f"data/{file.name}:{position}" and sample.split == "train"
        assert [(image_root / ref).read_bytes() for ref in sample.image_refs] == [i["bytes"] for i in row["images"]]
        assert sample.turns[0].text.startswith(f"{IMAGE_TOKEN}\n" * len(row["images"]) + row["texts"][0]["user"])
        texts = [(t["user"], t["assistant"]) for t in row["texts"]]
        pairs = list(zip(sample.turns[::2], sample.turns[1::2]))
        assert [(u.text.replace(f"{IMAGE_TOKEN}\n", ""), a.text) for u, a in pairs] == texts
        assert [t.role for t in sample.turns] == ["user", "assistant"] * len(texts)
        assert sample.extra == {"data_source": "synthetic"}
    assert Counter(len(s.image_refs) for s in samples) == {1: 15, 2: 5}


def test_onevision_rows_become_samples(tmp_path):
    dataset = make_dataset("onevision", tmp_path / "ov", n=20, seed=0, unusual=True)
    samples = {s.key: s for s in records("parquet", dataset.input / "vqa" / "train-00000-of-00001.parquet")}
    assert len(samples) == 21 and samples["ov00001"].origin == "train-00000-of-00001.parquet:1"
    first = samples["ov00001"]
    assert [t.role for t in first.turns] == ["user", "assistant", "user", "assistant"]
    assert first.turns[0].text.startswith(f"{IMAGE_TOKEN}\n") and len(first.image_refs) == 1
    assert first.extra == {"data_source": "synthetic_vqa"} and first.split == "train"
    assert samples["u_text_only"].image_refs == [] and IMAGE_TOKEN not in samples["u_text_only"].turns[0].text


def test_broken_rows_are_rejected_naming_file_and_row(tmp_path):
    dataset = make_dataset("cauldron", tmp_path / "raw", n=20, seed=0, defects=True)
    report, rejects = run_build(dataset, tmp_path / "out")
    assert [r["origin"] for r in rejects] == [f"data/train-00001-of-00002.parquet:{row}" for row in range(10, 15)]
    assert all(r["detail"].startswith(r["origin"]) for r in rejects if r["reason"] == "malformed_record")
    assert {name: s["samples"] for name, s in report["splits"].items()} == {"train": 20}


def test_onevision_build_reconciles(tmp_path):
    dataset = make_dataset("onevision", tmp_path / "raw", n=20, seed=0, defects=True)
    report, _ = run_build(dataset, tmp_path / "out", split=SplitSpec())
    assert report["written"] == 21 and report["splits"]["train"]["samples"] == 21


def test_messages_and_label_layouts(tmp_path):
    image = {"bytes": b"\x89PNG not really", "path": "a.png"}
    parts = pa.list_(pa.struct([("type", pa.string()), ("text", pa.string())]))
    message = pa.struct([("role", pa.string()), ("content", parts)])
    schema = pa.schema([("images", pa.list_(image_type())), ("messages", pa.list_(message))])
    content = [{"type": "image", "text": None}, {"type": "text", "text": "What is it?"}]
    row = {"images": [image], "messages": [{"role": "user", "content": content}, {"role": "assistant", "content": [
        {"type": "text", "text": "a test"}]}]}  # fmt: skip
    write_table(tmp_path / "m" / "test-00000.parquet", [row], schema, {})
    (sample,) = records("parquet", tmp_path / "m")
    assert [t.text for t in sample.turns] == [f"{IMAGE_TOKEN}\nWhat is it?", "a test"] and sample.split == "test"
    assert sample.image_refs[0].endswith(".png")
    labels = pa.schema([("image", image_type()), ("label", pa.int64())])
    names = {"label": {"names": ["daisy", "rose"], "_type": "ClassLabel"}}
    write_table(tmp_path / "l.parquet", [{"image": image, "label": 1}, {"image": image, "label": 5}], labels, names)
    good, bad = records("parquet", tmp_path / "l.parquet", class_choices=True)
    assert good.label == "rose" == good.turns[1].text and good.extra == {"choices": ["daisy", "rose"]}
    assert isinstance(bad, Reject) and bad.origin == "l.parquet:1" and "label 5 is outside the 2" in bad.detail
    write_table(tmp_path / "none.parquet", [{"label": 1}], pa.schema([("caption", pa.int64())]), {})
    with pytest.raises(SourceError, match=r"none.parquet: no texts, messages, conversations, label column"):
        records("parquet", tmp_path / "none.parquet")


def test_parquet_is_streamed_one_row_group_at_a_time(tmp_path, monkeypatch):
    """16 row groups of 4 rows of 128 KB incompressible images: arrow holds about one group, never the file."""
    rng = np.random.default_rng(0)
    schema = pa.schema([("image", image_type()), ("label", pa.int64())])
    rows = [{"image": {"bytes": rng.bytes(128 * 1024), "path": f"{i}.jpg"}, "label": i % 2} for i in range(64)]
    write_table(tmp_path / "big.parquet", rows, schema, {})
    del rows
    group_bytes, file_bytes = 4 * 128 * 1024, 64 * 128 * 1024
    assert pq.ParquetFile(tmp_path / "big.parquet").metadata.num_row_groups == 16
    calls = []
    original = pq.ParquetFile.iter_batches
    monkeypatch.setattr(pq.ParquetFile, "read", lambda *a, **k: pytest.fail("read the whole file"))
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, **k: calls.append(k) or original(self, **k))
    peak, count = 0, 0
    for record in parquet_reader.read(tmp_path / "big.parquet", tmp_path, SourceOptions()):
        peak, count = max(peak, pa.total_allocated_bytes()), count + isinstance(record, RawSample)
    assert count == 64 and [call["row_groups"] for call in calls] == [[group] for group in range(16)]
    assert all(call["columns"] == ["label", "image"] for call in calls)
    assert peak < min(10 * group_bytes, file_bytes // 2), f"arrow held {peak} bytes of a {file_bytes}-byte file"


def test_hf_disk_folder_keeps_its_splits_and_class_names(tmp_path):
    dataset = make_dataset("hf-disk", tmp_path / "raw", n=20, seed=0, defects=True)
    assert detect_format(dataset.input) == "hf-disk"
    samples = [r for r in records("hf-disk", dataset.input) if isinstance(r, RawSample)]
    assert Counter(s.split for s in samples) == {"train": 15, "test": 5}
    assert {s.label for s in samples} == {"red", "green", "blue"}
    assert samples[0].origin == "train/data-00000-of-00001.arrow:0"
    report, _ = run_build(dataset, tmp_path / "out")
    assert {name: s["samples"] for name, s in report["splits"].items()} == {"train": 15, "test": 5}
    assert (tmp_path / "out" / "test" / "index.json").is_file()


def test_unreadable_containers_fail_naming_the_file(tmp_path):
    dataset = make_dataset("hf-disk", tmp_path / "raw", n=8, seed=0)
    (dataset.input / "test" / "data-00000-of-00001.arrow").unlink()
    with pytest.raises(SourceError, match=r"test/state.json: lists data files that do not exist"):
        records("hf-disk", dataset.input)
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(SourceError, match=r"bad.parquet: not a readable parquet file"):
        records("parquet", tmp_path / "bad.parquet")
    with pytest.raises(SourceError, match=r"no \*.parquet files"):
        records("parquet", tmp_path / "raw")
