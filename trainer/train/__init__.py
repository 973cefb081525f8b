"""Training: the Trainer loop and its components (loaders, optimizer, step agreement, checkpoints, metrics)."""
