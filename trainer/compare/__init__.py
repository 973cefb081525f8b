"""`shardtune-compare`: runs side by side — from run folders, SLURM array/grid folders and W&B (files or API) — as
one table (`compare.md`, `compare.json`) and overlaid curves; `trainer/compare/cli.py` says what it writes."""
