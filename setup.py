from setuptools import find_packages, setup

setup(
    name="shardtune",
    version="0.1.0",
    description="Distributed fine-tuning of vision-language models from pre-sharded WebDataset streams",
    packages=find_packages(include=["data_shards", "data_shards.*", "trainer", "trainer.*", "slurm", "slurm.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "numpy>=1.24",
        "pillow>=10",
        "pyyaml>=6",
        "tqdm>=4.60",
        "braceexpand>=0.1.7",
        "transformers>=5.20,<6",
        "tokenizers>=0.22",
        "safetensors>=0.4",
        "peft>=0.20",
        "accelerate>=1.10",
        "deepspeed>=0.19,<0.20",
        "wandb>=0.30",
        "submitit>=1.5",
        "matplotlib>=3.7",
        "psutil>=5.9",
        "pyarrow>=15",  # data_shards: Hugging Face parquet and save_to_disk (arrow) datasets
    ],
    extras_require={
        # webdataset: tests read our shards with it; data_shards reads tars itself (it needs each member's offset)
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.15,<0.18", "webdataset>=1.0.2,<1.1"],
        "quant": ["bitsandbytes>=0.49"],
        "flash": ["flash-attn>=2.6"],
    },
    entry_points={
        "console_scripts": [
            "shardtune-data=data_shards.cli:main",
            "shardtune-train=trainer.train.cli:main",
            "shardtune-eval=trainer.evaluate.run:main",
            "shardtune-predict=trainer.evaluate.predict_cli:main",
            "shardtune-aggregate=trainer.evaluate.aggregate:main",
            "shardtune-merge=trainer.export.cli:main",
            "shardtune-plan=trainer.plan.cli:main",
            "shardtune-compare=trainer.compare.cli:main",
        ],
    },
)
