"""Small synthetic datasets on disk, in every raw input format shardtune ingests.

Images are coloured shapes on a light background, so every answer is a checkable one-word fact.
With `defects=True` a dataset also holds the records its reader must reject (`SyntheticDataset.defects`,
record key -> expected reason code) and odd but valid records it must keep (`SyntheticDataset.unusual`).
The same arguments always give byte-identical files.

Record keys: the `id` field (llava, messages); the image file's stem (captions, manifest, classes);
`row{N:06d}` for the N-th data row (pairs); `img{id}` (coco); `line{N}` for a malformed JSONL line;
`{video_id}_{frame:05d}` and `sa_{k}` (sam, an SA-V-style export: see `data_shards.synthetic.sam`).
`SYNTH_FORMATS` adds `scores` (images with per-image scores, SCUT-FBP5500's layout) to the build's `FORMATS`, and
`flowers102` (the oxford_flowers102 release), `cauldron` and `onevision` (HF parquet layouts, read as `parquet`)
and `hf-disk` (a save_to_disk DatasetDict); `SyntheticDataset.format` names the reader.
The unusual record that repeats an id with other content is listed under that id (the first record with it
is a good one); the build keeps it under a derived key.
"""

from data_shards.synthetic.benchmark import make_loose_benchmark_set
from data_shards.synthetic.dataset import SYNTH_FORMATS, make_dataset
from data_shards.synthetic.plan import SyntheticDataset
from data_shards.synthetic.vocabulary import FORMATS, TASKS

__all__ = ["FORMATS", "SYNTH_FORMATS", "TASKS", "SyntheticDataset", "make_dataset", "make_loose_benchmark_set"]
