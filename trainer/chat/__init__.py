"""Chat templates as published: rendering, answer spans found without template markers, tokenization."""
