"""report.json is a contract other tools read; report.md is the same facts for people.

Stable keys: schema_version, source{path, format, sha256}, reference{size_bytes, latency_ms,
accuracy}, artifacts[{target, path, precision, size_bytes, latency_ms{p50, p90, mean, runs,
warmup, threads}, fidelity{top1_agreement, cosine, max_abs_err, sqnr_db}, accuracy{top1}}],
calibration{samples, seed, sha256}, versions{...}. New keys may be added; these stay. The
artifacts are typed records (``report_types``), written through ``envelope``.
"""

from __future__ import annotations

import json
import math
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeopt import __version__
from edgeopt.deps import installed_versions
from edgeopt.report_types import GUARD_CHECK, ArtifactEntry, plain

SCHEMA_VERSION = 1


def build_report(*, command: str, config, source, source_sha256: str, calibration: dict | None,
                 validation: dict | None, artifacts: list[ArtifactEntry], notes: list[str],
                 wall_seconds: float) -> dict[str, Any]:
    first = artifacts[0] if artifacts else ArtifactEntry(target="", path="", precision="", size_bytes=0)
    reference = {
        "description": f"the source model for accuracy; its fp32 {first.target} form for size and latency",
        "size_bytes": first.baseline_size_bytes,
        "latency_ms": first.baseline_latency_ms,
        "accuracy": first.reference_accuracy,
        "conversion_fidelity": first.baseline_fidelity,
        "source_size_bytes": _size(source.handle.path),
    }
    for a in artifacts:
        if a.baseline_size_bytes:
            a.size_ratio = round(a.size_bytes / a.baseline_size_bytes, 4)
    source_entry = {
        "path": str(source.handle.path), "format": source.handle.format.value, "sha256": source_sha256,
        "inputs": [t.describe() for t in source.handle.inputs],
        "outputs": [t.describe() for t in source.handle.outputs],
    }
    # Metadata adds facts (params, MACs); it never overrides the contract's own keys.
    source_entry.update({k: v for k, v in source.handle.metadata.items()
                         if isinstance(v, (int, float, str)) and k not in source_entry})
    return envelope(command, {"source": source_entry, "reference": reference, "artifacts": artifacts,
                              "calibration": calibration, "validation": validation},
                    settings=config.model_dump(mode="json"), notes=notes, wall_seconds=wall_seconds)


def envelope(command: str, body: dict[str, Any], *, settings: dict, notes: list[str],
             wall_seconds: float) -> dict[str, Any]:
    """The keys every report shares around a command's own ``body``."""
    return _finite(plain({
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **body,
        "settings": settings,
        "versions": {"edgeopt": __version__, "python": platform.python_version(), **installed_versions()},
        "machine": {"system": platform.system(), "machine": platform.machine(), "processor": _cpu_name()},
        "notes": notes,
        "wall_seconds": round(wall_seconds, 2),
    }))


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _finite(value: Any) -> Any:
    """JSON has no NaN/Infinity: an exact match (SQNR of infinity) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _size(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table, one line per element; what every report and benchmark writes."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def summary_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per model variant (fp32 baseline, each pipeline stage, the artifact); shared by the
    terminal table and report.md."""
    header = ["model", "precision", "size", "x fp32 size", "p50 ms", "p90 ms", "speedup",
              "top1", "top1 agree", "cosine", "SQNR dB"]
    rows = []
    ref = report["reference"]
    for a in report["artifacts"]:
        base_size = a.get("baseline_size_bytes")
        base_p50 = (a.get("baseline_latency_ms") or {}).get("p50")

        def row(label, precision, size, latency, accuracy, fidelity):
            latency, fidelity = latency or {}, fidelity or {}
            speed = base_p50 / latency["p50"] if base_p50 and latency.get("p50") else None
            return [label, precision, fmt_bytes(size), fmt_num(size / base_size if size and base_size else None, 2),
                    fmt_num(latency.get("p50")), fmt_num(latency.get("p90")), fmt_num(speed, 2),
                    fmt_num((accuracy or {}).get("top1")), fmt_num(fidelity.get("top1_agreement")),
                    fmt_num(fidelity.get("cosine"), 4), fmt_num(fidelity.get("sqnr_db"), 1)]

        if base_size is not None:  # no baseline is made when nothing is measured (--no-validate)
            rows.append(row(f"{a['target']} fp32 (baseline)", "fp32", base_size, a.get("baseline_latency_ms"),
                            a.get("reference_accuracy") or ref.get("accuracy"), a.get("baseline_fidelity")))
        for name, v in (a.get("variants") or {}).items():
            if name != "fp32":
                rows.append(row(f"{a['target']} {name}", v.get("precision", "fp32"), v.get("fp32_size_bytes"),
                                v.get("latency_ms"), v.get("accuracy"), v.get("fidelity")))
        rows.append(row(Path(a["path"]).name, a["precision"], a["size_bytes"], a.get("latency_ms"),
                        a.get("accuracy"), a.get("fidelity")))
    return header, rows


def validate_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per artifact measured by `edgeopt validate`, side by side."""
    header = ["artifact", "runtime", "size", "p50 ms", "p90 ms", "p99 ms", "load s", "top1", "top1 agree",
              "cosine", "SQNR dB"]
    rows = []
    for a in report["artifacts"]:
        lat, fidelity = a.get("latency_ms") or {}, a.get("fidelity") or {}
        p50 = fmt_num(lat.get("p50")) + (" (unstable)" if lat.get("unstable") else "")
        rows.append([Path(a["path"]).name, a["target"], fmt_bytes(a.get("size_bytes")), p50, fmt_num(lat.get("p90")),
                     fmt_num(lat.get("p99")), fmt_num(a.get("load_seconds"), 2),
                     fmt_num((a.get("accuracy") or {}).get("top1")), fmt_num(fidelity.get("top1_agreement")),
                     fmt_num(fidelity.get("cosine"), 4), fmt_num(fidelity.get("sqnr_db"), 1)])
    return header, rows


def stage_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """What each pipeline stage bought: parameters, MACs and gzip size alongside the rows above."""
    header = ["stage", "params", "MACs", "details"]
    rows = []
    for st in report.get("stages") or []:
        details = st.get("details") or {}
        text = ""
        if details.get("method") == "channels":
            text = ", ".join(f"{d['layer']} {d['channels_before']}->{d['channels_after']}" for d in details["layers"])
        elif "sparsity" in details:
            text = ", ".join(f"{d['layer']} {d['sparsity']:.0%}" for d in details["sparsity"])
        elif "epochs_run" in details:
            last = details["history"][-1] if details.get("history") else {}
            text = (f"{details['epochs_run']} epochs (best {details['best_epoch']}), held-out agreement "
                    f"{last.get('held_out_agreement', float('nan')):.3f}")
        rows.append([st["stage"], f"{st['params']:,}" if st.get("params") else "-",
                     f"{st['macs']:,}" if st.get("macs") else "-", text])
    return header, rows


def guard_line(a: dict[str, Any]) -> str | None:
    """One sentence on the fidelity guard's verdict on artifact ``a``; the terminal and report.md say it."""
    g = a.get("guard")
    if not g:
        return None
    if g.get("fidelity_drop") is None:
        return f"fidelity guard: not measured (limit {g['limit']:g} points of {g['measure']})"
    interval = g.get("agreement_95")
    told = (f"fidelity guard: {g['fidelity_drop']:.3g} points of {g['measure']} on {g['samples']} samples"
            + (f" against {g['against']}" if g.get("against") else "")
            + (f" (top-1 agreement 95% interval {interval[0]:.3f}-{interval[1]:.3f})" if interval else "")
            + f", limit {g['limit']:g}")
    if g["held"]:
        return told + (": held after the search" if g.get("searched") else ": held")
    return told + ": MISSED" + (", no mix of layers kept out of int8 held it" if g.get("searched") else "")


PRECISION_WORDS = {"int16": "int16 activations with int8 weights", "fp16": "fp16 weights", "float": "float"}


def out_of_int8(q: dict[str, Any]) -> dict[str, list[str]]:
    """The layers an artifact's quantization kept out of int8, by the precision each ended on."""
    if q.get("precisions"):
        return {rung: names for rung, names in q["precisions"].items() if names}
    return {"float": q["keep_float"]} if q.get("keep_float") else {}


def out_of_int8_phrase(q: dict[str, Any], quote: str = "") -> tuple[int, str]:
    """How many layers are out of int8, and them by precision ("float: a, b" or "int16 ...: c; float: d")."""
    groups = out_of_int8(q)
    names = {rung: ", ".join(f"{quote}{n}{quote}" for n in layers) for rung, layers in groups.items()}
    if list(groups) == ["float"]:
        return len(groups["float"]), names["float"]
    return sum(map(len, groups.values())), "; ".join(f"{PRECISION_WORDS[rung]}: {names[rung]}" for rung in groups)


def quantization_lines(a: dict[str, Any]) -> list[str]:
    """report.md's section on how an artifact was quantized and the budget search, if any."""
    q, checks = a.get("quantization") or {}, [c for c in a.get("budgets") or [] if c["budget"] != GUARD_CHECK]
    guarded = guard_line(a)
    if not q and not checks and not guarded:
        return []
    lines = ["", f"## Quantization and budgets: `{Path(a['path']).name}`", ""]
    if guarded:
        lines.append(f"- {guarded[0].upper()}{guarded[1:]}")
    if q:
        method = f"percentile {q['percentile']:g}" if q.get("method") == "percentile" else q.get("method")
        lines.append(f"- Calibration: {method}, {'per-channel' if q.get('per_channel') else 'per-tensor'} weights, "
                     f"by {q.get('mechanism')}")
    count, kept = out_of_int8_phrase(q, "`")
    if count:
        where = "Kept in float" if list(out_of_int8(q)) == ["float"] else "Kept out of int8"
        lines.append(f"- {where} ({q.get('keep_float_mechanism')}): {kept} — {count} of {q.get('layers')} layers")
    cost = q.get("latency_cost")
    if cost:
        lines.append(f"- Latency cost: p50 {cost['p50_ms']:.3f} ms against {cost['int8_p50_ms']:.3f} ms with every "
                     f"layer in int8 ({cost['percent']:+.1f}%)")
    size = q.get("size_cost")
    if size:
        lines.append(f"- Size cost: {size['bytes']:,} bytes against {size['int8_bytes']:,} with every layer in int8 "
                     f"({size['percent']:+.1f}%)")
    for c in checks:
        value = "not measured" if c["value"] is None else f"{c['value']:,}" if isinstance(c["value"], int) \
            else f"{c['value']:.4g}"
        lines.append(f"- Budget {c['budget']} {c['limit']:g}: {value} — {'passed' if c['passed'] else 'MISSED'}")
    search = q.get("search") or {}
    if search:
        before, after = search["before"], search["after"]
        lines.append(f"- Search: fidelity drop {before['fidelity_drop']:.3g} -> {after['fidelity_drop']:.3g} points"
                     + (f", accuracy drop {before['accuracy_drop']:.3g} -> {after['accuracy_drop']:.3g} points"
                        if before.get("accuracy_drop") is not None and after.get("accuracy_drop") is not None else "")
                     + f"; {search['exports']} exports in {search.get('wall_seconds', 0):.1f} s"
                     + ("" if search.get("needed") else " (plain int8 met the budgets)"))
    if search.get("tried"):
        lines += ["", "| layers in float | fidelity drop | accuracy drop | SQNR dB | within budget |",
                  "|---|---|---|---|---|"]
        for t in search["tried"]:
            lines.append(f"| {t['kept_in_float']} | {t['fidelity_drop']:.3g} | {fmt_num(t.get('accuracy_drop'), 2)} | "
                         f"{fmt_num(t.get('sqnr_db'), 1)} | {'yes' if t['passed'] else 'no'} |")
    if search.get("ladder"):
        lines += ["", "Lowering the layers kept in float (int16: 16-bit activations, int8 weights; fp16: fp16 weights):",
                  "", "| rung | int16 | fp16 | float | fidelity drop | within budget |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['rung']} | {t.get('int16', '')} | {t.get('fp16', '')} | {t.get('float', '')} | "
                  + (f"{t['fidelity_drop']:.3g}" if "fidelity_drop" in t else f"refused: {t.get('refused')}")
                  + f" | {'yes' if t['passed'] else 'no'} |" for t in search["ladder"]]
    if search.get("ranking"):
        method = search.get("ranking_method", "each layer alone in int8, the rest float")
        lines += ["", f"Sensitivity ({method}; the layers most worth keeping in float first):", "",
                  "| layer | op | fidelity drop | SQNR dB |", "|---|---|---|---|"]
        if "added_nsr" in search["ranking"][0]:
            lines[-2:] = ["| layer | op | noise-to-signal ratio it adds |", "|---|---|---|"]
            # None: the layer's tensors hold inf or NaN, which gives no ratio (ranked first).
            lines += [f"| `{r['layer']}` | {r['op']} | "
                      + ("not finite" if r["added_nsr"] is None else f"{r['added_nsr']:.3g}") + " |"
                      for r in search["ranking"]]
        else:
            for r in search["ranking"]:
                lines.append(f"| `{r['layer']}` | {r['op']} | {r['fidelity_drop']:.3g} | {fmt_num(r.get('sqnr_db'), 1)} |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    src = report["source"]
    lines = [f"# edgeopt {report['command']} report", "",
             f"- Source: `{src['path']}` ({src['format']}, sha256 `{src['sha256'][:16]}…`)",
             f"- Inputs: {', '.join(f'`{i}`' for i in src['inputs'])}"]
    if report.get("calibration"):
        c = report["calibration"]
        lines.append(f"- Calibration: `{c['path']}`, {c['samples']} samples, seed {c['seed']}")
    if report.get("validation"):
        v = report["validation"]
        held = " (held out from the calibration data)" if v.get("held_out_from_calibration") else ""
        lines.append(f"- Validation: `{v['path']}`{held}, {v['samples']} samples")
    lines.append("")
    header, rows = validate_rows(report) if report["command"] == "validate" else summary_rows(report)
    lines.extend(markdown_table(header, rows))
    if report.get("stages"):
        lines += ["", "## Stages", "", *markdown_table(*stage_rows(report))]
    for a in report["artifacts"]:
        ops = a.get("ops") or {}
        layout = a.get("input_layout") or {}
        if ops or layout:
            lines += ["", f"## `{Path(a['path']).name}`", ""]
        if layout:
            # The layout this artifact takes, which may differ from the source's (NCHW PyTorch -> NHWC TFLite).
            lines.append("- Input layout: " + ", ".join(f"`{k}` {v or 'not an image'}" for k, v in layout.items()))
        if ops:
            lines += [f"- Input dtypes: {a.get('io_dtypes')}",
                      f"- Size: {a['size_bytes']:,} bytes ({a.get('gzip_size_bytes', 0):,} gzipped)",
                      f"- Full integer: {'yes' if ops.get('full_integer') else 'no'}"
                      + (f" (float ops: {', '.join(ops['float_ops'])})" if ops.get("float_ops") else ""),
                      "- Ops: " + ", ".join(f"{k} x{v}" for k, v in ops.get("counts", {}).items())]
        lat = a.get("latency_ms")
        if lat:
            lines.append(f"- Latency: {lat['runs']} runs after {lat['warmup']} warm-up, {lat['threads']} threads, "
                         f"interleaved with the fp32 baseline" + (" — UNSTABLE, re-run on a quiet machine"
                                                                    if lat.get("unstable") else ""))
    for a in report["artifacts"]:
        lines += quantization_lines(a)
    if report.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines += ["", f"Versions: {versions}.", f"Machine: {report['machine']['processor']}.",
              f"Wall time: {report['wall_seconds']} s.", ""]
    return "\n".join(lines)
