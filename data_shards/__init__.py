"""Ingest, validate, split and pre-shard VLM datasets into WebDataset tars, and stream them to every rank."""

from data_shards.sample import IMAGE_TOKEN, SCHEMA_VERSION, ImageData, Sample, Turn

__all__ = ["IMAGE_TOKEN", "SCHEMA_VERSION", "ImageData", "Sample", "Turn"]
