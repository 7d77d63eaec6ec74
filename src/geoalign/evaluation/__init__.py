"""Evaluation: run a model (or a baseline) over a benchmark against a gallery, then report."""
