"""edgeopt: make a trained model ready for an edge device, and prove it kept its accuracy.

``import edgeopt`` loads no heavy framework; each is imported when a run needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "compress", "Result", "errors"]

if TYPE_CHECKING:
    from edgeopt.api import compress
    from edgeopt.pipeline import Result


def __getattr__(name: str) -> Any:
    if name == "compress":
        from edgeopt.api import compress

        return compress
    if name == "Result":
        from edgeopt.pipeline import Result

        return Result
    if name == "errors":
        import edgeopt.errors as errors

        return errors
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
