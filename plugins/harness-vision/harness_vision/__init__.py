"""Image datasets and architectures for distill-harness (registered through entry points)."""
