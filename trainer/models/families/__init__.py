"""Model families as data: what real checkpoints publish (`published/`) and the rules each family imposes."""
