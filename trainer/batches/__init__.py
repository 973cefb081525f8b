"""Micro-batches from samples: chat rendering to tokens and labels, blank images for image-less batches, packing."""
