"""report.html: one self-contained page (inline SVG, no script, no network) for people.

Plots: latency distribution per variant, and size against fidelity. Tables: the side-by-side
summary, the per-stage effects, the tool versions.
"""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from edgeopt.report import fmt_bytes, stage_rows, summary_rows, validate_rows

COLORS = ["#3366cc", "#dc3912", "#109618", "#ff9900", "#990099", "#0099c6", "#dd4477", "#66aa00"]
WIDTH = 900


def _variants(report: dict[str, Any]) -> list[dict[str, Any]]:
    """(label, size, latency stats, fidelity) for every measured variant, baseline first."""
    out = []
    for a in report["artifacts"]:
        if a.get("baseline_latency_ms"):
            out.append({"label": f"{a['target']} fp32 baseline", "size": a.get("baseline_size_bytes"),
                        "latency": a["baseline_latency_ms"], "fidelity": a.get("baseline_fidelity") or {}})
        for name, v in (a.get("variants") or {}).items():
            if name != "fp32":
                out.append({"label": f"{a['target']} {name}", "size": v.get("fp32_size_bytes"),
                            "latency": v.get("latency_ms") or {}, "fidelity": v.get("fidelity") or {}})
        out.append({"label": Path(a["path"]).name, "size": a.get("size_bytes"), "latency": a.get("latency_ms") or {},
                    "fidelity": a.get("fidelity") or {}})
    return out


def latency_svg(variants: list[dict[str, Any]]) -> str:
    """Horizontal box per variant: whisker min..p99, box p50..p90, dot at the mean."""
    rows = [v for v in variants if v["latency"].get("p50") is not None]
    if not rows:
        return "<p>No latency was measured.</p>"
    top = max(v["latency"].get("p99", v["latency"]["p50"]) for v in rows) * 1.1 or 1.0
    left, right, row_h = 230, 40, 34
    height = 40 + row_h * len(rows)
    scale = (WIDTH - left - right) / top
    parts = [f'<svg id="latency-plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'role="img" aria-label="latency distribution per variant">']
    for i, v in enumerate(rows):
        lat, y, color = v["latency"], 20 + i * row_h, COLORS[i % len(COLORS)]
        x = {k: left + lat.get(k, lat["p50"]) * scale for k in ("min", "p50", "p90", "p99", "mean")}
        parts += [
            f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" font-size="12">{escape(v["label"])}</text>',
            f'<line x1="{x["min"]:.1f}" x2="{x["p99"]:.1f}" y1="{y + 10}" y2="{y + 10}" stroke="{color}"/>',
            f'<rect class="box" x="{x["p50"]:.1f}" y="{y}" width="{max(x["p90"] - x["p50"], 1.5):.1f}" '
            f'height="20" fill="{color}" fill-opacity="0.35" stroke="{color}"/>',
            f'<line x1="{x["p50"]:.1f}" x2="{x["p50"]:.1f}" y1="{y}" y2="{y + 20}" stroke="{color}" stroke-width="2"/>',
            f'<circle cx="{x["mean"]:.1f}" cy="{y + 10}" r="3" fill="{color}"/>',
            f'<text x="{x["p99"] + 4:.1f}" y="{y + 14}" font-size="11">p50 {lat["p50"]:.3f} ms</text>',
        ]
    axis_y = height - 12
    parts.append(f'<line x1="{left}" x2="{WIDTH - right}" y1="{axis_y}" y2="{axis_y}" stroke="#888"/>')
    for k in range(5):
        value = top * k / 4
        parts.append(f'<text x="{left + value * scale:.1f}" y="{height - 1}" font-size="10" '
                     f'text-anchor="middle">{value:.2f} ms</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def size_fidelity_svg(variants: list[dict[str, Any]]) -> str:
    """Each variant as a point: size (x) against top-1 agreement, or cosine, with the reference (y)."""
    points = []
    for v in variants:
        fidelity = v["fidelity"]
        y = fidelity.get("top1_agreement", fidelity.get("cosine"))
        if v["size"] and y is not None:
            points.append((v["label"], v["size"], y))
    if not points:
        return "<p>No fidelity was measured.</p>"
    left, bottom, top_pad, right = 70, 40, 34, 330
    height = 300
    max_size = max(p[1] for p in points) * 1.1
    low = min(0.9, min(p[2] for p in points) - 0.02)
    sx = (WIDTH - left - right) / max_size
    sy = (height - bottom - top_pad) / (1.0 - low + 0.01)
    parts = [f'<svg id="size-fidelity-plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
             f'role="img" aria-label="size against fidelity">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{WIDTH - right}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
             f'<text x="{(WIDTH - right + left) / 2}" y="{height - 5}" font-size="11" text-anchor="middle">size</text>',
             f'<text x="12" y="14" font-size="11">fidelity</text>']
    for k in range(5):
        value = low + (1.0 - low) * k / 4
        y = height - bottom - (value - low) * sy
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{value:.3f}</text>')
    for i, (label, size, fidelity) in enumerate(points):
        # Points can coincide (a stage and its int8 form), so labels go to a legend, keyed by number.
        x, y, color = left + size * sx, height - bottom - (fidelity - low) * sy, COLORS[i % len(COLORS)]
        legend_x, legend_y = WIDTH - right + 16, top_pad + 18 * i
        parts += [f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}" fill-opacity="0.8"/>',
                  f'<text x="{x:.1f}" y="{y - 9:.1f}" font-size="10" text-anchor="middle">{i + 1}</text>',
                  f'<circle cx="{legend_x}" cy="{legend_y - 4}" r="5" fill="{color}"/>',
                  f'<text x="{legend_x + 10}" y="{legend_y}" font-size="11">{i + 1}. {escape(label)}: '
                  f'{escape(fmt_bytes(size))}, {fidelity:.3f}</text>']
    parts.append("</svg>")
    return "\n".join(parts)


def _table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_html(report: dict[str, Any]) -> str:
    header, rows = validate_rows(report) if report["command"] == "validate" else summary_rows(report)
    variants = _variants(report)
    sections = [f"<h1>edgeopt {escape(report['command'])} report</h1>",
                f"<p>Source: <code>{escape(report['source']['path'])}</code> ({escape(report['source']['format'])})"
                f" — created {escape(report['created'])}</p>",
                "<h2>Side by side</h2>", _table(header, rows, "summary"),
                "<h2>Latency distribution</h2>",
                "<p>Whiskers min–p99, box p50–p90, dot the mean; all variants measured interleaved in one process.</p>",
                latency_svg(variants),
                "<h2>Size and fidelity</h2>", size_fidelity_svg(variants)]
    if report.get("stages"):
        sh, sr = stage_rows(report)
        sections += ["<h2>Stages</h2>", _table(sh, sr, "stages")]
    if report.get("warnings"):
        sections += ["<h2>Warnings</h2><ul>" + "".join(f"<li>{escape(w)}</li>" for w in report["warnings"]) + "</ul>"]
    if report.get("notes"):
        sections += ["<h2>Notes</h2><ul>" + "".join(f"<li>{escape(n)}</li>" for n in report["notes"]) + "</ul>"]
    versions = [[k, str(v)] for k, v in report["versions"].items()]
    sections += ["<h2>Tool versions</h2>", _table(["package", "version"], versions, "versions"),
                 f"<p>Machine: {escape(str(report['machine'].get('processor')))}</p>"]
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>edgeopt {escape(report['command'])} report</title><style>{style}</style></head>"
            f"<body>{''.join(sections)}</body></html>\n")
