"""benchmarks/RESULTS.md from the peer benchmark's measurements: machine, versions, tables, reading."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

from _results import show_and_save

from edgeopt import __version__
from edgeopt.deps import installed_versions
from edgeopt.report import markdown_table

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
TARGET_TITLES = {"tflite": "TFLite on LiteRT (XNNPACK)", "onnx": "ONNX on onnxruntime (CPU provider)",
                 "openvino": "OpenVINO IR on the OpenVINO CPU plugin"}
LATENCY_SLACK, SIZE_SLACK, DROP_SLACK = 1.05, 1.02, 0.2  # what "on par with the best peer" allows
FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")

# Why a peer's artifact differs from edgeopt's, where the recipes differ by design. Keyed by
# (target, peer); the reading quotes it next to the measured figures.
RECIPE_DIFFERENCES = {
    ("tflite", "TFLite converter"): "the same converter and recipe edgeopt calls for Keras sources (min/max "
                                    "full-integer PTQ, per-channel weights), so artifacts and kernels match",
    ("tflite", "litert-torch PT2E"): "one scale per weight tensor (its default config), and the module's NCHW "
                                     "layout kept as it is",
    ("tflite", "AI Edge Quantizer"): "the quantizer edgeopt uses for PyTorch sources; the peer converts the NCHW "
                                     "module as it is, edgeopt first moves image inputs and outputs channels-last",
    ("onnx", "ORT quantize_static"): "its defaults are int8 activations with per-tensor int8 weights (S8S8); edgeopt "
                                     "uses uint8 activations with per-channel int8 weights (U8S8), the pairing "
                                     "onnxruntime's x86 integer kernels are built around, and drops the all-zero "
                                     "bias zero points",
    ("openvino", "nncf.quantize"): "the same NNCF defaults; the peer converts Keras models through a SavedModel "
                                   "with OpenVINO's TensorFlow frontend, edgeopt through ONNX",
}


def _cpu() -> tuple[str, str]:
    model, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                have = set(value.split())
                flags = " ".join(f for f in FLAGS if f in have)
                break
    except OSError:
        pass
    return model, flags


def _ms(stats) -> str:
    return f"{stats.p50:.3f} / {stats.p90:.3f}"


def _quality(cell, v) -> str:
    q = v.quality
    return f"{100 * q['top1']:.2f}%" if "top1" in q else f"{100 * q['top1_agreement']:.1f}%"


def _floor_ms(cell, v, threads: int, peaks: dict) -> float:
    return 1000 * cell.macs / peaks[threads]["int8" if v.int8 else "fp32"]


def variant_rows(cells: list, target: str, peaks: dict) -> list[list[str]]:
    rows = []
    for cell in (c for c in cells if c.target == target):
        fp32 = cell.get("fp32")
        for v in cell.variants:
            lat = v.latency
            rows.append([
                cell.bench.name, v.label, f"{v.size:,}", f"{v.size / fp32.size:.3f}", f"{v.size / cell.params:.3f}",
                _ms(lat[1]), _ms(lat[2]),
                f"{fp32.latency[1].p50 / lat[1].p50:.2f} / {fp32.latency[2].p50 / lat[2].p50:.2f}",
                f"{100 * lat[1].p50 / _floor_ms(cell, v, 1, peaks):.0f}% / "
                f"{100 * lat[2].p50 / _floor_ms(cell, v, 2, peaks):.0f}%",
                _quality(cell, v), f"{v.quality['drop_points']:+.2f}", f"{v.quality['cosine']:.4f}",
                f"{v.quality['sqnr_db']:.1f}", "-" if v.tool_s is None else f"{v.tool_s:.1f}"])
    return rows


VARIANT_HEADER = ["model", "artifact", "size bytes", "x fp32", "x params", "p50 / p90 ms, 1 thread",
                  "p50 / p90 ms, 2 threads", "speed-up over fp32, 1 / 2 threads", "latency / floor, 1 / 2 threads",
                  "top-1 (agreement)", "drop pts", "cosine", "SQNR dB", "tool s"]


def verdicts(cells: list) -> list[dict]:
    """edgeopt against the best peer, per model and target, with each criterion's outcome."""
    found = []
    for cell in cells:
        edge, peers = cell.get("edgeopt"), cell.peers
        fastest = {t: min(peers, key=lambda p: p.latency[t].p50) for t in (1, 2)}
        latency = {t: edge.latency[t].p50 / fastest[t].latency[t].p50 for t in (1, 2)}
        smallest = min(peers, key=lambda p: p.size)
        best_drop = min(peers, key=lambda p: p.quality["drop_points"])
        short = []
        if max(latency.values()) > LATENCY_SLACK:
            worst = max(latency, key=latency.get)
            short.append(f"latency {latency[worst]:.2f}x {fastest[worst].label} at {worst} thread"
                         f"{'s' if worst > 1 else ''}")
        if edge.size > SIZE_SLACK * smallest.size:
            per_tensor = cell.per_tensor
            short.append(f"size {edge.size / smallest.size:.3f}x {smallest.label}" + (
                f" (edgeopt --per-tensor: {per_tensor.size / smallest.size:.3f}x)" if per_tensor else ""))
        if edge.quality["drop_points"] > best_drop.quality["drop_points"] + DROP_SLACK:
            short.append(f"drop {edge.quality['drop_points']:.2f} pts vs {best_drop.quality['drop_points']:.2f} "
                         f"({best_drop.label})")
        found.append({"cell": cell, "latency": latency, "fastest": fastest, "smallest": smallest,
                      "best_drop": best_drop, "short": short})
    return found


def summary_rows(found: list[dict]) -> list[list[str]]:
    rows = []
    for f in found:
        cell, edge = f["cell"], f["cell"].get("edgeopt")
        fp32 = cell.get("fp32")
        rows.append([cell.bench.name, cell.target, f["fastest"][2].label,
                     f"{f['latency'][1]:.2f}", f"{f['latency'][2]:.2f}",
                     f"{edge.size / f['smallest'].size:.3f}",
                     f"{edge.quality['drop_points']:+.2f} / {f['best_drop'].quality['drop_points']:+.2f}",
                     f"{fp32.latency[2].p50 / edge.latency[2].p50:.2f}",
                     "on par or ahead" if not f["short"] else "behind: " + "; ".join(f["short"])])
    return rows


SUMMARY_HEADER = ["model", "target", "fastest peer (2 threads)", "p50 edgeopt/peer, 1 thread",
                  "p50 edgeopt/peer, 2 threads", "size edgeopt/smallest peer", "drop pts edgeopt / best peer",
                  "edgeopt speed-up over fp32, 2 threads", "verdict"]


PER_CHANNEL_BYTES = {"tflite": "TFLite stores a float scale and an int64 zero point per output channel of every weight "
                               "and bias tensor, 24 bytes a channel",
                     "onnx": "ONNX QDQ stores a float scale and an int8 zero point per weight channel and a float "
                             "scale per bias channel, 9 bytes a channel"}
PER_CHANNEL_WHY = ("Per-channel or per-tensor: edgeopt quantizes weights per output channel by default, as the TFLite "
                   "converter and NNCF do, because one scale per tensor loses accuracy on depthwise and unevenly "
                   "scaled layers of trained networks. It costs bytes per channel, and on microsecond-sized models "
                   "a little time for per-channel requantization; `--per-tensor` gives the per-tensor peers' "
                   "granularity, and its rows show what that buys.")
TINY_MACS = 10_000_000  # below this a run takes microseconds and per-call overhead decides latency


def _cause(f: dict) -> str:
    cell, edge = f["cell"], f["cell"].get("edgeopt")
    per_tensor = cell.per_tensor
    causes = []
    if any(s.startswith("size") for s in f["short"]):
        causes.append(f"per-channel scales ({PER_CHANNEL_BYTES[cell.target]})"
                      if per_tensor is not None and per_tensor.size <= SIZE_SLACK * f["smallest"].size
                      else "not analysed yet")
    if any(s.startswith("latency") for s in f["short"]):
        threads = max(f["latency"], key=f["latency"].get)
        mine, peer = edge.latency[threads], f["fastest"][threads].latency[threads]
        gap_us = 1000 * (mine.p50 - peer.p50)
        spread_us = 1000 * max(mine.p90 - mine.p50, peer.p90 - peer.p50)
        if per_tensor is not None and per_tensor.latency[threads].p50 <= LATENCY_SLACK * peer.p50:
            causes.append(f"per-channel requantization, {gap_us:.1f} us on a {1000 * peer.p50:.0f} us run "
                          "(edgeopt --per-tensor runs as fast as the peer)")
        elif gap_us <= spread_us:
            causes.append(f"{gap_us:.1f} us on a {1000 * peer.p50:.0f} us run, within the measured spread "
                          f"(p90 - p50 up to {spread_us:.1f} us): noise at this size")
        elif cell.macs < TINY_MACS:
            causes.append(f"{gap_us:.1f} us on a {1000 * peer.p50:.0f} us run: per-call overhead, not compute")
        else:
            causes.append("not analysed yet")
    if any(s.startswith("drop") for s in f["short"]):
        causes.append("not analysed yet")
    return "; ".join(causes)


def _reading(found: list[dict], cells: list, peaks: dict) -> list[str]:
    ahead = [f for f in found if not f["short"]]
    lines = [f"- edgeopt meets all three criteria (p50 <= {LATENCY_SLACK}x the fastest peer at 1 and 2 threads, "
             f"size <= {SIZE_SLACK}x the smallest, accuracy drop <= the best peer's + {DROP_SLACK} points) in "
             f"{len(ahead)} of {len(found)} model/target cells."]
    for f in found:
        if f["short"]:
            cell = f["cell"]
            lines.append(f"- Behind on {cell.bench.name} -> {cell.target}: {'; '.join(f['short'])}. "
                         f"Cause: {_cause(f)}.")
    wins = sorted(found, key=lambda f: f["latency"][2])[:3]
    lines.append("- Largest leads at 2 threads: " + ", ".join(
        f"{f['cell'].bench.name} -> {f['cell'].target} ({f['latency'][2]:.2f}x {f['fastest'][2].label})"
        for f in wins) + ".")
    for cell in cells:
        if cell.bench.name.startswith("ResNet-50") and cell.target == "tflite":
            edge, fp32 = cell.get("edgeopt"), cell.get("fp32")
            speed = fp32.latency[2].p50 / edge.latency[2].p50
            lines.append(f"- {cell.bench.name} int8 TFLite at 2 threads runs {speed:.2f}x faster than its fp32 "
                         f"TFLite ({fp32.latency[2].p50:.1f} -> {edge.latency[2].p50:.1f} ms; target >= 3.2x).")
    big = [c for c in cells if c.macs >= TINY_MACS]
    if big:
        best = min(big, key=lambda c: c.get("edgeopt").latency[1].p50 * 1e-3 / (c.macs / 1e9))
        lines.append(f"- Against the compute floor: the large nets' int8 artifacts run at "
                     f"{_floor_range(big, 1, peaks)} of the floor at 1 thread and {_floor_range(big, 2, peaks)} at 2; closest is "
                     f"{best.bench.name} -> {best.target}. The rest is memory traffic, depthwise and element-wise "
                     "ops (which do few MACs per byte) and (de)quantization at the float edges.")
    lines.append(f"- Small models (under {TINY_MACS / 1e6:.0f} M MACs: the digits nets) finish in microseconds: their "
                 "latency is the runtime's per-call overhead, so their latency / floor ratios are large and their "
                 "latency ratios say little.")
    if any("per-channel" in line for line in lines):
        lines.append(f"- {PER_CHANNEL_WHY}")
        lines += _per_channel_evidence(cells)
    seen = set()
    for cell in cells:
        for p in cell.peers:
            note = RECIPE_DIFFERENCES.get((cell.target, p.label))
            if note and note not in seen:
                seen.add(note)
                lines.append(f"- {p.label} ({cell.target}): {note}.")
    return lines


def _per_channel_evidence(cells: list) -> list[str]:
    """What per-tensor weights cost on the trained models, where accuracy is measured against labels."""
    lines = []
    for cell in cells:
        per_tensor = cell.per_tensor
        if per_tensor is None or "top1" not in per_tensor.quality:
            continue
        edge = cell.get("edgeopt")
        lines.append(f"- {cell.bench.name} -> {cell.target}, trained: per-channel {100 * edge.quality['top1']:.2f}% "
                     f"top-1 at {edge.quality['sqnr_db']:.1f} dB SQNR, per-tensor "
                     f"{100 * per_tensor.quality['top1']:.2f}% at {per_tensor.quality['sqnr_db']:.1f} dB; "
                     f"per-channel costs {edge.size - per_tensor.size:,} bytes more.")
    return lines


def _floor_range(cells: list, threads: int, peaks: dict) -> str:
    ratios = [c.get("edgeopt").latency[threads].p50 / (1000 * c.macs / peaks[threads]["int8"]) for c in cells]
    return f"{100 * min(ratios):.0f}-{100 * max(ratios):.0f}%"


def write(cells: list, peak_rows: dict, peaks: dict, seconds: float, args) -> Path:
    model, flags = _cpu()
    versions = {"edgeopt": __version__, "python": platform.python_version(), **installed_versions()}
    found = verdicts(cells)
    lines = ["# edgeopt against the peer tools", "",
             f"Written by `benchmarks/peers.py` (`make bench`) on {time.strftime('%Y-%m-%d')} in {seconds / 60:.1f} "
             "minutes. Every figure below comes from that one run.", "",
             "## Machine", "", f"- CPU: {model}, {os.cpu_count()} cores visible; flags: {flags}",
             f"- {platform.system()} {platform.release()}, Python {platform.python_version()}",
             "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "",
             "## How it was measured", "",
             "- Each model goes through edgeopt (`edgeopt.compress`, default settings, validation off) and through "
             "each peer's documented default int8 recipe, on the same calibration samples (all of the calibration "
             f"file: 300 digits images, or {args.calib_samples} random images for the 224x224 nets).",
             "- Peers: TFLite converter full-integer PTQ (`Optimize.DEFAULT`, representative dataset, "
             "`TFLITE_BUILTINS_INT8`, float I/O) for Keras; for PyTorch, litert-torch's PT2E quantizer "
             "(`get_symmetric_quantization_config()`) and litert-torch + AI Edge Quantizer (`static_wi8_ai8`); "
             "onnxruntime `quant_pre_process` then `quantize_static` with every default, on the fp32 ONNX edgeopt "
             "writes (torch.onnx dynamo export, or tf2onnx for Keras); OpenVINO `convert_model` (SavedModel for "
             "Keras, the module for PyTorch, static input shape) then `nncf.quantize` with its defaults.",
             "- All artifacts of a model and target are loaded in one process and timed interleaved (each round "
             f"runs every artifact once, in rotating order) after 5 warm-up runs, up to {args.runs} rounds or "
             f"{args.budget:g} s per thread count; p50/p90 over those rounds. Speed-up = fp32 p50 / int8 p50 on the "
             "same runtime and thread count.",
             "- Accuracy: top-1 on the 360 labelled digits validation images (drop = source top-1 minus artifact "
             f"top-1, in points). Random-weight nets: fidelity to the float source on {args.eval_samples} "
             "random images, drop = 100 x (1 - mean cosine of the logits), the measure edgeopt's "
             "`--max-fidelity-drop` uses for outputs without labels; top-1 agreement and SQNR are shown too "
             "(random logits lie close together, so top-1 flips easily and says less).",
             "- Size: bytes on disk (OpenVINO: .xml + .bin); `x params` is size over the floor of 1 byte per "
             "parameter.",
             "- Tool s: wall time from the source model to the int8 file, in this process (libraries already "
             "imported). edgeopt's includes loading the model and its fp32 baseline export; the onnxruntime "
             "peer's includes the fp32 ONNX export it starts from.",
             "- Compute floor: MACs counted from the source graph, divided by the machine's peak multiply-add rate "
             "for the artifact's precision at that thread count, measured by `benchmarks/peak_rate.py`: "
             "single-op compute-bound kernels (3x3 conv 256->256 on 28x28, 1x1 conv 512->2048 on 14x14, a "
             "256x2048x2048 matmul) built in fp32 and int8, run on LiteRT/XNNPACK and onnxruntime, median time "
             "over about a second each; the peak is the best of them. `latency / floor` is p50 over that floor: "
             "100% would be an artifact running at the machine's peak.", "",
             "## Peak multiply-add rate", ""]
    peak_header = ["threads", "int8 GMAC/s", "measured on", "fp32 GMAC/s", "measured on", "int8 / fp32"]
    peak_table = [[str(t), f"{p['int8'] / 1e9:.1f}", str(p["int8_how"]), f"{p['fp32'] / 1e9:.1f}", str(p["fp32_how"]),
                   f"{p['int8'] / p['fp32']:.2f}"] for t, p in peaks.items()]
    lines += markdown_table(peak_header, peak_table)
    lines += ["", "Every kernel measured:", ""]
    kernel_header = ["runtime", "kernel", "dtype", "threads", "MMAC", "median ms", "GMAC/s"]
    lines += markdown_table(kernel_header, [[r.runtime, r.kernel, r.dtype, str(r.threads), f"{r.macs / 1e6:.0f}",
                                             f"{1000 * r.median_s:.3f}", f"{r.rate / 1e9:.1f}"]
                                            for rows in peak_rows.values() for r in rows])
    lines += ["", "## Summary: edgeopt against the best peer", "",
              "Ratios below 1 mean edgeopt's artifact is faster or smaller. Drop: accuracy points lost against "
              "the source model (lower is better).", ""]
    summary = summary_rows(found)
    lines += markdown_table(SUMMARY_HEADER, summary)
    lines += ["", "## Reading", ""] + _reading(found, cells, peaks)
    for target in dict.fromkeys(c.target for c in cells):
        lines += ["", f"## {TARGET_TITLES[target]}", ""]
        lines += markdown_table(VARIANT_HEADER, variant_rows(cells, target, peaks))
        meta = [f"{c.bench.name}: {c.params:,} params, {c.macs / 1e6:,.1f} M MACs" for c in cells
                if c.target == target]
        lines += ["", "Models: " + "; ".join(meta) + "."]
    args.results.write_text("\n".join(lines) + "\n")
    if args.results == RESULTS_MD:
        show_and_save("peers", "edgeopt against the best peer (details: benchmarks/RESULTS.md)", SUMMARY_HEADER,
                      summary)
    return args.results
