"""Measurements of artifacts: latency, fidelity against the source, accuracy."""
