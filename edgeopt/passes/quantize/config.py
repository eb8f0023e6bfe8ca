"""What a quantize pass takes besides the float artifact and the data: ``QuantConfig``."""

from __future__ import annotations

from dataclasses import dataclass

from edgeopt.errors import UsageError

CALIBRATION_METHODS = ("auto", "minmax", "percentile", "entropy", "mse")  # auto: each backend's own default
DEFAULT_PERCENTILE = 99.999  # onnxruntime's own default for its Percentile calibrator


@dataclass(frozen=True)
class QuantConfig:
    """How an int8 artifact is calibrated, and which layers stay in float.

    Every quantize pass takes this one object (``quant=``); the pipeline refuses a method a backend
    cannot do before any work starts, so a pass never substitutes another one. ``keep_float``
    holds layer names exactly as the float artifact names them and the backend's exclusion
    mechanism takes them (ONNX node names, TFLite op output tensor names, OpenVINO friendly names):
    fixed at conversion, they stay the same for every quantization of that artifact.
    """

    method: str = "auto"
    percentile: float = DEFAULT_PERCENTILE
    per_channel: bool = True
    keep_float: tuple[str, ...] = ()
    # edgeopt's empirical bias correction after the backend quantizes (ONNX: onnx_bias_correction)
    bias_correction: bool = False
    # edgeopt's cross-layer equalization of the float graph before quantizing (ONNX: equalization):
    # whether the plain int8 model may be chosen from the equalized graph, and whether this one is
    equalization: bool = False
    equalize: bool = False
    # edgeopt's SmoothQuant-style migration of MatMul/Gemm activation outliers (ONNX: smoothing):
    # whether the plain int8 model may be chosen from the smoothed graph, and whether this one is
    smoothing: bool = True
    smooth: bool = False
    # edgeopt's learned rounding of the plain int8 model's weights (``--optimize adaround``): its
    # time limit in seconds; None: nearest rounding, as the backend writes it
    adaround_seconds: float | None = None
    # Layers (named as keep_float names them) whose activations are quantized to 16 bits, their
    # weights to int8: the ladder's int16 rung on paths that quantize it (``ExportPath.int16_layers``).
    int16_activations: tuple[str, ...] = ()

    def describe(self) -> str:
        method = {"percentile": f"percentile {self.percentile:g}", "auto": "the backend's default"}.get(self.method,
                                                                                                    self.method)
        return f"{method}, {'per-channel' if self.per_channel else 'per-tensor'} weights"


DEFAULT_QUANT = QuantConfig()


def check_quant(exporter_key: str, quant: QuantConfig, *, keep_float: bool = False) -> str:
    """The mechanism that does ``quant.method`` on this path, or a UsageError naming target and
    method; with ``keep_float``, also the refusal of a path that cannot keep layers in float."""
    from edgeopt.registry import export_path

    target = exporter_key.split("->")[-1]
    path = export_path(exporter_key)
    methods = path.calibration if path else {}
    if quant.method not in methods:
        raise UsageError(
            f"The {target} target ({exporter_key}) cannot calibrate with method '{quant.method}'; "
            f"its quantizer offers: {', '.join(methods) or 'none'}.",
            hint=f"Pick one of those for --calib-method (or calibration.method in the recipe), or drop "
                 f"'{target}' from the targets. edgeopt never swaps in another method silently.")
    if quant.adaround_seconds and (path is None or "adaround" not in path.optimizers):
        raise UsageError(
            f"The {target} target ({exporter_key}) cannot learn the rounding of its int8 weights "
            "(--optimize adaround).",
            hint="Drop --optimize (or calibration.optimize in the recipe) for this target; "
                 "edgeopt doctor lists the paths that offer it.")
    if keep_float and (path is None or path.keep_float is None):
        raise UsageError(
            f"The {target} target ({exporter_key}) cannot keep chosen layers in float, which per-layer "
            "overrides and --max-accuracy-drop/--max-fidelity-drop need.",
            hint="Drop the overrides and accuracy/fidelity budgets for this target, or pick a target that can "
                 "(edgeopt doctor lists the paths).")
    return methods[quant.method]
