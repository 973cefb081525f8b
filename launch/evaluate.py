"""Evaluate: `python launch/evaluate.py --checkpoint RUN --shards shards/val --out EVAL` (see --help).

Under torchrun every rank evaluates a slice of the split."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluate.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
