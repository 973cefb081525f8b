"""Model families as data: what real checkpoints publish (`published/`), and tiny random models built to match (`kit/`)."""
