"""Export a checkpoint as a standalone model: `python launch/merge_lora.py --checkpoint RUN --out OUT` (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.export.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
