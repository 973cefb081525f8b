"""Evaluate: `python launch/evaluate.py --checkpoint RUN --shards shards/val --out EVAL` (torchrun shards it; see --help)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluate.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
