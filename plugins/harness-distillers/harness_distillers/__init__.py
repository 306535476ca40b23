"""Distillation methods and baselines for distill-harness (registered through entry points)."""
