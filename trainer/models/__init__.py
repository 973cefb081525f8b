"""Models: loading a base checkpoint, its parts and what is trained, processors, per-family rules."""
