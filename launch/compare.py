"""Compare runs: `python launch/compare.py RUN... --out DIR` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.compare.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
