"""shardtune trainer: DeepSpeed fine-tuning of vision-language models from WebDataset shards."""
