"""Evaluation and prediction: generation, multiple-choice scoring, scores and reports, the evaluation command."""
