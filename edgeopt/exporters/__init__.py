"""Exporters turn a loaded source model into a deployable artifact, one target per module."""
