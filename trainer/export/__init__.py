"""Export: what a run folder holds, merging LoRA into the base, bounded checkpoint readers, saving, verification."""
