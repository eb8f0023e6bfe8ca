"""Transformations of a model before export (pruning, quantization, distillation)."""
