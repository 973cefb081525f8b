"""Per-rank memory of a training config: `python launch/plan.py --config C --gpus-per-node G --gpu-memory-gib M`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.plan.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
