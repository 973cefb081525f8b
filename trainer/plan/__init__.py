"""`shardtune-plan`: per-rank memory of a training config before anything is loaded, and the micro batch that fits."""
