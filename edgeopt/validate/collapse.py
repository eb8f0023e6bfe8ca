""""Fidelity collapsed": an artifact edgeopt wrote that no longer does what its source does.

It is still written, since the user may want to inspect it, but never as a quiet success: the
summary and the report say which output, how far it is from the source, and the likely cause.
"""

from __future__ import annotations

from typing import Any

# Below these an int8 model has lost its function rather than some precision: a classifier
# disagreeing with its float model on one input in five, or a map whose cosine to the float
# one is under 0.9 (a detector's probability map at 0.64 is noise with a few peaks).
MIN_AGREEMENT = 0.8
MIN_COSINE = 0.9


def collapse_warning(entry: dict[str, Any]) -> str | None:
    fidelity = entry.get("fidelity") or {}
    if entry.get("precision") == "fp32" or not fidelity:
        return None
    agreement, cosine = fidelity.get("top1_agreement"), fidelity.get("cosine")
    if agreement is not None and agreement < MIN_AGREEMENT:
        measured = f"top-1 agreement with the source {agreement:.3f} (below {MIN_AGREEMENT})"
    elif agreement is None and cosine is not None and cosine < MIN_COSINE:
        measured = f"cosine to the source's outputs {cosine:.3f} (below {MIN_COSINE}), SQNR " \
                   f"{fidelity.get('sqnr_db', float('nan')):.1f} dB"
    else:
        return None
    name = entry.get("path", "the artifact").rsplit("/", 1)[-1]
    return (f"Fidelity collapsed in '{name}' ({entry.get('target')}, {entry.get('precision')}): {measured}. "
            "Likely cause: a few layers whose int8 activation ranges are too coarse, most often an output "
            "sigmoid/softmax map or an attention block. Use --max-fidelity-drop POINTS to keep the most "
            "sensitive layers in float, or try --calib-method percentile, or more calibration data.")
