"""The demo (`make demo`): synthetic data → shards → LoRA on a tiny LLaVA, 2 CPU ranks, ZeRO-2."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.testing.demo import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
