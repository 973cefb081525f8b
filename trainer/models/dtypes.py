"""The weight dtypes a config may name (`model.dtype`), as torch dtypes."""

import torch

from trainer.config.schema import DTYPE_NAMES

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
