"""Predict: `python launch/predict.py --checkpoint RUN --image x.jpg --prompt "..." [--choices A,B,C]` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluate.predict_cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
