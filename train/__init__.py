"""Pretraining: data pipeline, training loop, checkpoints and evaluation."""
