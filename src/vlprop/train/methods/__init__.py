"""Self-supervised training objectives (one module per method)."""
