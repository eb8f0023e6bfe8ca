"""Run one conformance case on one target: edgeopt as a user runs it, and the peers' defaults on
the same calibration samples, every artifact judged by the same evaluator on the same validation
samples.

``python -m tests.conformance.runner [CASE ...] [--targets tflite,onnx]`` prints the table and,
with ``--write``, rewrites ``reference.yaml`` from what it measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.outputs import working_dir
from tests.conformance import zoo

ROOT = Path(__file__).resolve().parents[2]


def edgeopt_compress(case: zoo.Case, target: str, work: Path, calib: Path, val: Path,
                     extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """``edgeopt compress`` with default flags (plus the case's own), as a subprocess."""
    out = work / f"edgeopt_{target}"
    cmd = [sys.executable, "-m", "edgeopt.cli", "compress", *case.model_args(), "--target", target,
           "--calib", str(calib), "--val", str(val), "-o", str(out), *case.flags, *extra]
    if case.kind == "torchscript":
        cmd.append("--trust-model")
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT,
                          env={**os.environ, "COLUMNS": "200"})
    result: dict[str, Any] = {"rc": done.returncode, "seconds": round(time.perf_counter() - started, 1),
                              "stderr": done.stderr[-4000:], "stdout": done.stdout[-4000:], "out": out}
    report = out / "report.json"
    if report.is_file():
        result["report"] = json.loads(report.read_text())
        result["artifact"] = result["report"]["artifacts"][0]
    return result


def load_reference_model(case: zoo.Case, calib: Path | None = None):
    from edgeopt.pipeline import load_source

    args = case.model_args()
    weights = Path(args[2]) if case.kind == "torch_module" else None
    shapes = None
    if "--input-shape" in case.flags:
        name, _, dims = case.flags[case.flags.index("--input-shape") + 1].partition("=")
        shapes = {name: tuple(int(d) for d in dims.split(","))}
    source, _ = load_source(Path(args[0]), trust="--trust-model" in case.flags or case.kind == "torchscript",
                            weights=weights, input_shapes=shapes,
                            calib=calib)
    return source


def judge(source, target: str, artifact: Path, val_path: Path, task: str) -> dict[str, float]:
    """Fidelity of ``artifact`` to the source on the validation samples: edgeopt's own evaluator."""
    from edgeopt import calibration as cal
    from edgeopt import registry
    from edgeopt.validate.evaluate import Metric, Reference

    subset, _ = cal.select(cal.open_data(val_path, source.handle.inputs, None, role="validation"),
                           samples=10_000, seed=0)
    session = registry.resolve("runtime", target)(artifact, input_names=source.handle.input_names,
                                                   source_inputs=source.handle.inputs,
                                                   source_outputs=source.handle.outputs)
    found = Reference.of_model(source, subset, Metric("top1")).measure(session).fidelity
    return {"top1_agreement": found.get("top1_agreement"), "cosine": found["cosine"]} if task == "classifier" \
        else {"cosine": found["cosine"]}


def score(fidelity: dict[str, Any] | None, task: str) -> float | None:
    """The one number a case is judged by: top-1 agreement for classifiers, else cosine."""
    if not fidelity:
        return None
    value = fidelity.get("top1_agreement") if task == "classifier" else fidelity.get("cosine")
    return None if value is None else float(value)


def peer_defaults(case: zoo.Case, target: str, work: Path, calib: Path, val: Path,
                  fp32_onnx: Path | None, *, best: bool = False) -> dict[str, dict[str, Any]]:
    """Each peer's documented default int8 recipe for this source and target, judged alike; with
    ``best``, each peer's best documented settings instead."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import peer_tools

    from edgeopt import calibration as cal

    source = load_reference_model(case, calib)
    arrays = dict(np.load(calib))
    names = source.handle.input_names
    whole = cal.open_data(calib, source.handle.inputs).whole
    rows = [list(arrays[n]) if n in whole else arrays[n] for n in names]
    example = tuple(a[0] if isinstance(a, list) else a[:1] for a in rows)
    if case.kind in ("torch_module", "torchscript"):
        import torch

        example = tuple(torch.from_numpy(a) for a in example)
    keras_path = Path(case.model_args()[0]) if case.kind in ("keras", "keras3") else None
    module = source.native if case.kind in ("torch_module", "torchscript") else None
    # An ONNX source with free sizes goes to the peers with the sizes fixed to the data's, as their
    # users fix them (onnxruntime's make_dim_param_fixed): their quantizers stop at free sizes.
    onnx_path = _sized_onnx(case, source, rows, work) if case.kind == "onnx" else fp32_onnx
    saved_model = Path(case.model_args()[0]) if case.kind == "saved_model" else None
    peer_src = peer_tools.Source(keras_path=keras_path, module=module, example=example, fp32_onnx=onnx_path,
                                 saved_model=saved_model)
    recipes = {
        "tflite": ([("TFLite converter", peer_tools.tflite_converter)] if keras_path or saved_model else
                   [("AI Edge Quantizer", peer_tools.ai_edge_quantizer)] if module is not None else []),
        "onnx": [("ORT quantize_static", peer_tools.onnxruntime_quantize_static)] if onnx_path else [],
        "openvino": [("nncf.quantize", peer_tools.nncf_quantize)],
    }[target]
    if best:
        recipes = {
            "tflite": [("TFLite converter 16x8", peer_tools.tflite_converter_16x8)] if keras_path or saved_model
            else [],
            "onnx": [("ORT per-channel, Percentile", peer_tools.onnxruntime_percentile_per_channel)]
            if onnx_path else [],
            "openvino": [("nncf.quantize, full bias correction", peer_tools.nncf_full_bias_correction)],
        }[target]
    found: dict[str, dict[str, Any]] = {}
    for name, recipe in recipes:
        # onnxruntime's pre-processing drops its temporary files into the working folder.
        with working_dir(work):
            found[name] = _peer(name, recipe, peer_src, rows, source, target, work, val, case)
    return found


def _sized_onnx(case: zoo.Case, source, rows: list[np.ndarray], work: Path) -> Path:
    import onnx

    from edgeopt.frameworks.onnx_shapes import pin_inputs

    path = Path(case.model_args()[0])
    if all(d is not None for t in source.handle.inputs for d in t.shape):
        return path
    shapes = {t.name: np.shape(a[0]) if isinstance(a, list) else (1, *a.shape[1:])
              for t, a in zip(source.handle.inputs, rows)}
    model, _ = pin_inputs(onnx, onnx.load(str(path)), shapes, path)
    sized = work / f"{path.stem}_sized.onnx"
    onnx.save(model, str(sized))
    return sized


def _peer(name, recipe, peer_src, rows, source, target: str, work: Path, val: Path, case: zoo.Case) -> dict:
    """One peer's default on the same samples, judged by the same evaluator."""
    out = work / f"peer_{name.replace(' ', '_').replace('.', '_')}.{target if target != 'openvino' else 'xml'}"
    started = time.perf_counter()
    try:
        paths = recipe(peer_src, rows, out)
        fidelity = judge(source, target, paths[0], val, case.task)
        return {"fidelity": fidelity, "score": score(fidelity, case.task),
                "size_bytes": sum(p.stat().st_size for p in paths), "seconds": round(time.perf_counter() - started, 1)}
    except Exception as exc:  # a peer that fails on a real model is a finding, not a test error
        return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def run(case: zoo.Case, target: str, work: Path, *, peers: bool = True) -> dict[str, Any]:
    calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
    mine = edgeopt_compress(case, target, work, calib, val)
    row: dict[str, Any] = {"case": case.id, "target": target, "rc": mine["rc"], "seconds": mine["seconds"]}
    art = mine.get("artifact")
    if art:
        row.update(fp32_cosine=(art.get("baseline_fidelity") or {}).get("cosine"),
                   int8=score(art.get("fidelity"), case.task), size_bytes=art.get("size_bytes"),
                   fp32_size_bytes=art.get("baseline_size_bytes"), speedup=art.get("speedup"),
                   warnings=mine["report"].get("warnings", []), mechanism=(art.get("quantization") or {}).get(
                       "mechanism"),
                   kept=len((art.get("quantization") or {}).get("keep_float") or []),
                   layers=(art.get("quantization") or {}).get("layers"))
        if mine["rc"] == 1:  # the fidelity guard held no mix: the best artifact is written, and why
            row["error"] = (mine["stderr"] or mine["stdout"]).strip()[-1500:]
    else:
        row["error"] = (mine["stderr"] or mine["stdout"]).strip()[-1500:]
    if peers:
        fp32_onnx = None
        if target == "onnx" and case.kind != "onnx" and art:
            fp32_onnx = _fp32_onnx(case, work, calib)
        row["peers"] = peer_defaults(case, target, work, calib, val, fp32_onnx)
        scores = [p["score"] for p in row["peers"].values() if p.get("score") is not None]
        row["best_peer"] = max(scores) if scores else None
    return row


def _fp32_onnx(case: zoo.Case, work: Path, calib: Path) -> Path | None:
    """The float ONNX onnxruntime's quantizer starts from, written by edgeopt --precision fp32."""
    out = work / "fp32_onnx"
    subprocess.run([sys.executable, "-m", "edgeopt.cli", "compress", *case.model_args(), "--target", "onnx",
                    "--precision", "fp32", "--calib", str(calib), "--no-validate", "-o", str(out), *case.flags],
                   capture_output=True, timeout=900, cwd=ROOT)
    found = sorted(out.glob("*.onnx"))
    return found[0] if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*")
    parser.add_argument("--ci-first", action="store_true", help="the cells make test runs first, then the rest")
    parser.add_argument("--targets", default=",".join(zoo.ALL_TARGETS))
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--peers-only", action="store_true", help="measure the peers again, keep edgeopt's figures")
    parser.add_argument("--work", default="/tmp/edgeopt-conformance")
    parser.add_argument("--json", default=None)
    parser.add_argument("--write", action="store_true", help="merge the figures into reference.yaml")
    parser.add_argument("--from-json", default=None, help="write reference.yaml from an earlier --json run")
    args = parser.parse_args()
    if args.from_json:
        _write_reference(json.loads(Path(args.from_json).read_text()))
        return
    rows = []
    chosen = [zoo.BY_ID[c] for c in args.cases] if args.cases else list(zoo.CASES)
    cells = [(c, t) for c in chosen for t in args.targets.split(",") if t in c.targets]
    if args.ci_first:
        cells.sort(key=lambda cell: cell[1] not in cell[0].ci)
    for case, target in cells:
        if args.peers_only:
            from tests.conformance import reference

            work = Path(args.work) / case.id
            calib, val = zoo.write_data(case, work / "data", calib=case.calib_samples, val=case.val_samples)
            found = peer_defaults(case, target, work, calib, val, None)
            reference.update_peers(case, target, found)
            print(case.id, target, {k: v.get("score", v.get("error", "")[:80]) for k, v in found.items()}, flush=True)
            continue
        row = run(case, target, Path(args.work) / case.id, peers=not args.no_peers)
        rows.append(row)
        if args.json:  # after every cell, so that a long run stopped early keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
        if args.write:
            _write_reference([row])
        peers = {k: (v.get("score") if "score" in v else v.get("error", "")[:60])
                 for k, v in row.get("peers", {}).items()}
        print(f"{case.id:24} {target:9} rc={row['rc']} {row['seconds']:6.1f}s fp32cos={row.get('fp32_cosine')} "
              f"int8={row.get('int8')} peers={peers} speedup={row.get('speedup')} "
              f"{('ERR ' + row['error'][-300:]) if 'error' in row else ''}", flush=True)


def _write_reference(rows: list[dict[str, Any]]) -> None:
    import platform

    from tests.conformance import reference

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    reference.write(rows, zoo.BY_ID, f"{cpu}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
