"""Benchmarks of the ops, the training step and generation; run benchmarks/run.py (see README.md here)."""
