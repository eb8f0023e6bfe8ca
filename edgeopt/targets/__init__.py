"""Runtimes that execute artifacts: ``open_session(path, threads) -> Session``."""
