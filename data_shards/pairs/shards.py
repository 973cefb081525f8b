"""One fold's shards through `data_shards.build`'s own steps: read (the `pairs` reader), check, dedupe, write
shards and index, reject list, report that reconciles. The only differences from `build`: each CSV *is* a
split (no re-splitting), sample keys are prefixed with their side (`train/row000001`), and each sample's
extra gains `items`, the two image names as the CSV gives them.

Shards hold every sample's image bytes, so an image shared by many pairs is stored once per pair.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from data_shards.build import REJECTS_NAME, BuildConfig, index_header, run_parallel, write_rejects, write_split
from data_shards.dedupe import dedupe
from data_shards.records import RawSample, Reject
from data_shards.report import build_report, write_report
from data_shards.sources import Source, open_source
from data_shards.validate import CheckedSample, check_sample

SIDES = ("train", "val")


def tagged(record: RawSample | Reject, side: str) -> RawSample | Reject:
    if isinstance(record, Reject):
        return replace(record, key=f"{side}/{record.key}")
    return replace(record, key=f"{side}/{record.key}", extra={**record.extra, "items": list(record.image_refs)})


def side_of(key: str | None) -> str:
    return (key or "").partition("/")[0]


def build_fold(csvs: dict[str, Path], config: BuildConfig, split: dict[str, Any]) -> dict[str, Any]:
    """Shards `config.out/{train,val}/` from the two pair CSVs; returns the fold's report (also written there).

    `split` describes how the fold was made; it replaces the split options in the indexes and report.
    """
    sources = {side: open_source("pairs", csvs[side], config.image_root, config.options) for side in SIDES}
    records = [tagged(record, side) for side in SIDES for record in sources[side].records()]
    kept, rejects, keys = checked_records(records, sources["train"].image_root, config)
    splits = {side: [sample for sample in kept if side_of(sample.raw.key) == side] for side in SIDES}
    write_rejects(config.out / REJECTS_NAME, rejects)
    headers = {side: fold_header(sources[side], config, splits[side], split) for side in SIDES}
    infos = {side: write_split(side, splits[side], sources[side], config, headers[side]) for side in SIDES}
    report = build_report(len(records), kept, rejects, splits, infos, headers["train"], keys)
    report["sources"] = {side: headers[side]["source"] for side in SIDES}
    report["sides"] = {side: side_counts(side, records, splits[side], rejects) for side in SIDES}
    write_report(config.out, report)
    return report


def checked_records(
    records: list[RawSample | Reject], image_root: Path, config: BuildConfig
) -> tuple[list[CheckedSample], list[Reject], dict[str, Any]]:
    """`build`'s check and dedupe steps: (kept samples, rejects, the key summary for the report)."""
    raws = [record for record in records if isinstance(record, RawSample)]
    rejects = [record for record in records if isinstance(record, Reject)]
    check = partial(check_sample, image_root=image_root, policy=config.policy)
    results = run_parallel(check, raws, config.workers, "check", config.progress)
    rejects += [result for result in results if isinstance(result, Reject)]
    deduped = dedupe([result for result in results if isinstance(result, CheckedSample)], config.keep_duplicates)
    return deduped.kept, rejects + deduped.rejects, deduped.summary()


def fold_header(source: Source, config: BuildConfig, kept: list[CheckedSample], split: dict) -> dict[str, Any]:
    header = index_header(source, config, kept)
    header["options"]["split"] = split
    return header


def side_counts(side: str, records: list, written: list[CheckedSample], rejects: list[Reject]) -> dict[str, int]:
    """rows = written + rejected, for one side."""
    return {
        "rows": sum(1 for record in records if side_of(record.key) == side),
        "written": len(written),
        "rejected": sum(1 for reject in rejects if side_of(reject.key) == side),
    }
