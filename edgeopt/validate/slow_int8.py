""""int8 slower than fp32": when an int8 artifact's p50 is above its fp32 form's on the same
runtime, say so and name the likely cause found in the graph the runtime executes.

The evidence is the artifact's op summary (``report.json`` ``ops``): op counts after the runtime's
own fusions and the compute ops left in float.
"""

from __future__ import annotations

from typing import Any

# Ops that only convert between float and int8; outside the model's inputs and outputs each one is
# a Quantize/Dequantize pair the runtime did not fuse away, or the edge of a float island.
CONVERSION_OPS = ("QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                  "FakeQuantize")


def likely_causes(entry: dict[str, Any], io_tensors: int) -> list[str]:
    """Why an int8 artifact may run slower than fp32, from its ``ops`` (and the layers kept in float)."""
    ops = entry.get("ops") or {}
    counts: dict[str, int] = ops.get("counts") or {}
    causes = []
    conversions = {op: n for op, n in counts.items() if op in CONVERSION_OPS}
    extra = sum(conversions.values()) - io_tensors
    if extra > 0:
        listed = ", ".join(f"{op} x{n}" for op, n in sorted(conversions.items()))
        causes.append(f"{extra} Quantize/Dequantize ops beyond the {io_tensors} at the model's inputs and outputs "
                      f"({listed}): unfused pairs convert tensors between float and int8 inside the graph")
    float_ops = ops.get("float_ops") or []
    if float_ops:
        causes.append(f"ops left in float: {', '.join(float_ops)} (each float island is entered and left "
                      "through a Dequantize/Quantize pair)")
    kept = (entry.get("quantization") or {}).get("keep_float") or []
    if kept:
        causes.append(f"{len(kept)} layers kept in float by overrides or the budget search: "
                      f"{', '.join(kept[:5])}{', ...' if len(kept) > 5 else ''}")
    if not causes:
        causes.append("the graph is full integer with no extra conversions: the model may be too small for int8 "
                      "kernels to pay off, or this CPU lacks fast int8 instructions for the runtime")
    return causes


def slow_int8_warning(entry: dict[str, Any], io_tensors: int) -> str | None:
    """The warning for an int8 artifact slower than its fp32 form, or None."""
    if not str(entry.get("precision", "")).startswith("int8"):
        return None
    p50, base = (entry.get("latency_ms") or {}).get("p50"), (entry.get("baseline_latency_ms") or {}).get("p50")
    if not p50 or not base or p50 <= base:
        return None
    name = entry.get("path", "the int8 artifact").rsplit("/", 1)[-1]
    spread = max((entry.get("latency_ms") or {}).get("p90", p50) - p50,
                 (entry.get("baseline_latency_ms") or {}).get("p90", base) - base)
    noise = (f" The difference is within the measured noise (p90 - p50 spread {spread:.3f} ms): re-run with more "
             "--runs on a quiet machine to confirm.") if p50 - base <= spread else ""
    return (f"int8 slower than fp32: '{name}' p50 {p50:.3f} ms vs {base:.3f} ms for its fp32 form on the "
            f"{entry.get('target', 'same')} runtime. Likely cause: " + "; ".join(likely_causes(entry, io_tensors))
            + "." + noise)
