"""Aggregate k-fold evaluations: `python launch/aggregate.py --reports runs/eval/fold*/report.json --out SUMMARY`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.evaluate.aggregate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
