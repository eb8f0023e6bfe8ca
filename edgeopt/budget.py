"""int8 within an accuracy budget: per-layer overrides, sensitivity ranking, and the search for the
fewest layers to keep in float.

One loop serves every backend. A backend supplies two things: its quantize pass, which keeps the
layers named in ``QuantConfig.keep_float`` in float with its own mechanism (onnxruntime
``nodes_to_exclude``, NNCF ``ignored_scope``, the TFLite converter's ``denylisted_nodes``,
ai-edge-quantizer's NO_QUANTIZE recipe entries), and a
``quant-layers`` registry entry listing the layers it quantized under those names. Every try
quantizes the target's one float artifact again (or edits the int8 one); nothing is converted
again. Everything is measured on the target's own runtime against the source model:

1. export plain int8 (overrides applied); if the budgets hold, that is the artifact;
2. rank layers by sensitivity: up to FEW_LAYERS, each layer alone in int8, all others in float,
   scored at the model's output (the budget's own drop, then SQNR); past it, where the path ranks
   from one run (``sensitivity``: onnxruntime and NNCF), by the error each layer adds at its output,
   elsewhere by such tries on a few validation samples. Where the path can edit its int8 artifact
   (``float_edit``: onnxruntime and NNCF), every try is an edit and the artifact is the edit that held;
3. keep the most sensitive 1, 2, 4, ... layers in float until the budgets hold, then narrow down
   between the last count that failed and the first that passed (where the measured excess
   crosses the budget, and at the middle, in turn).

Quantizing once per layer suits the small models edge devices run; the report records how many
quantizations ("exports") and edits it took, and how long.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt import calibration as cal
from edgeopt import registry
from edgeopt.errors import ConversionError, UsageError
from edgeopt.exporters.base import ExportResult, FloatArtifact, Layer, relocated
from edgeopt.passes.quantize.config import QuantConfig, check_quant
from edgeopt.frameworks.base import LoadedModel
from edgeopt.recipe import BudgetsConfig
from edgeopt.report_types import QuantizationInfo, SearchInfo
from edgeopt.targets.base import open_own_artifact
from edgeopt.validate.evaluate import Quality, Reference

Progress = Callable[[str], None]
Export = Callable[[Path, QuantConfig], ExportResult]

# The rankings and the edit probe use this many validation samples: they order layers and check a
# mechanism, while every try is judged on all of them.
RANKING_SAMPLES = 16
# Up to this many candidate layers, they are ranked by one try each on every validation sample;
# past it, from one run where the path can (else by a try each on RANKING_SAMPLES).
FEW_LAYERS = 32
# A search try whose cosine on its first EARLY_SAMPLES validation samples is beyond EARLY_EXCESS
# times the limit fails without the rest: on PP-OCRv4's detector the three tries that end so are
# 2.0-3.3x over on the first 16 samples and 2.4-3.6x on all 48.
EARLY_SAMPLES = 16
EARLY_EXCESS = 2.0
# Points of fidelity drop the all-float edit may keep for edits to stand in for quantizing again.
EDIT_REACHES_FLOAT = 0.05


# --- measuring ---------------------------------------------------------------------------------

class Judge:
    """Scores artifacts of one target on its runtime against the run's reference outputs."""

    def __init__(self, target: str, source: LoadedModel, reference: Reference, threads: int | None) -> None:
        self._target = target
        self._source = source
        self._threads = threads
        self.reference = reference

    @property
    def samples(self) -> int:
        return self.reference.samples

    def rows(self, samples: int) -> list[dict[str, np.ndarray]]:
        """The first ``samples`` validation rows."""
        return self.reference.rows(samples)

    def subset(self, samples: int) -> Judge:
        """A judge of the first ``samples`` validation samples (itself when there are no more)."""
        first = self.reference.first(samples)
        return self if first is self.reference else Judge(self._target, self._source, first, self._threads)

    def measure(self, exported: ExportResult) -> Quality:
        files = (exported.path, *exported.extra_files)
        known = self.reference.known(files)
        if known is not None:
            return known
        return self.reference.measure(open_own_artifact(self._target, exported.path, self._source,
                                                        threads=self._threads), files)

    def measure_unless(self, exported: ExportResult, head: int, hopeless: Callable[[Quality], bool]
                       ) -> tuple[Quality, bool]:
        """As ``measure``, but settled on the first ``head`` samples where ``hopeless`` says so
        (then with False: that quality is of those samples only)."""
        files = (exported.path, *exported.extra_files)
        known = self.reference.known(files)
        if known is not None:
            return known, True
        session = open_own_artifact(self._target, exported.path, self._source, threads=self._threads)
        return self.reference.measure_unless(session, files, head, hopeless)


# --- budgets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    name: str
    limit: float
    value: float | None
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"budget": self.name, "limit": self.limit, "value": self.value, "passed": self.passed}


def checks(budgets: BudgetsConfig, *, fidelity_drop: float | None, accuracy_drop: float | None,
           speedup: float | None = None, size: int | None = None) -> list[Check]:
    """Each budget that is set, against its measured value; a value exactly at a limit passes."""
    measured = {"max_fidelity_drop": fidelity_drop, "max_accuracy_drop": accuracy_drop,
                "min_speedup": speedup, "max_size": size}
    result = []
    for name, limit in budgets.model_dump().items():
        if limit is None:
            continue
        value = measured[name]
        passed = value is not None and (value >= limit if name.startswith("min_") else value <= limit + 1e-9)
        result.append(Check(name, limit, value, passed))
    return result


def _excess(q: Quality, budgets: BudgetsConfig) -> float:
    """How far beyond its budget the worst driving measure is (<= 1 when every budget holds)."""
    ratios = []
    for drop, limit in ((q.fidelity_drop, budgets.max_fidelity_drop), (q.accuracy_drop, budgets.max_accuracy_drop)):
        if limit is None or drop is None:
            continue
        ratios.append(drop / limit if limit > 0 else (0.0 if drop <= 1e-9 else math.inf))
    return max(ratios, default=0.0)


# --- overrides ---------------------------------------------------------------------------------

def apply_overrides(overrides: dict[str, str], layers: list[Layer], where: str) -> tuple[dict[str, str], list[str]]:
    """Each layer's precision from the override patterns (re.search on its name and label; the last
    match wins), and a warning for each pattern that matches no layer of ``where``."""
    chosen: dict[str, str] = {}
    warnings = []
    for pattern, precision in overrides.items():
        regex = re.compile(pattern)
        hits = [layer for layer in layers if regex.search(layer.name) or (layer.label and regex.search(layer.label))]
        if not hits:
            names = ", ".join(layer.title for layer in layers[:6]) + (", ..." if len(layers) > 6 else "")
            warnings.append(f"Override '{pattern}' -> {precision} matched no layer of {where}; its layers are: "
                            f"{names or 'none'}.")
        for layer in hits:
            chosen[layer.name] = precision
    return chosen, warnings


# --- the search --------------------------------------------------------------------------------

@dataclass
class Outcome:
    """The artifact one target ends with, and what it took to get there."""

    result: ExportResult
    info: QuantizationInfo  # the report's artifacts[].quantization
    plain: ExportResult | None = None  # the all-int8 artifact, when layers ended in float: its latency is the cost
    warnings: list[str] = field(default_factory=list)
    met: bool = True


@dataclass
class Request:
    """What the pipeline asks of one target."""

    target: str
    key: str  # exporter key, e.g. keras->onnx
    export: Export  # (path, settings) -> ExportResult: a quantization of ``floating``
    floating: FloatArtifact  # the target's float artifact, converted once
    calib: cal.Subset | None
    quant: QuantConfig
    overrides: dict[str, str]
    budgets: BudgetsConfig
    judge: Judge | None  # None without validation data: no search
    fallback_cost: str = "p50"  # "size": layers out of int8 go down the ladder (CompressConfig.fallback_cost)


def quant_layers(floating: FloatArtifact, calib: cal.Subset | None, quant: QuantConfig,
                 artifact: Path) -> list[Layer]:
    """The layers the plain int8 ``artifact`` (quantized from ``floating``) quantized, under the names
    overrides match and the search keeps in float; `compress --list-layers` prints these same ones."""
    return registry.resolve("quant-layers", floating.key)(floating, artifact, calib=calib, quant=quant)


def run(req: Request, out: Path, scratch: Callable[[str], Path], say: Progress) -> Outcome:
    """Export ``req`` to ``out``: plain int8 when it meets the budgets, else with the fewest
    sensitive layers kept in float. Tries are exported to ``scratch(name)`` and removed."""
    started = time.perf_counter()
    info = QuantizationInfo(method=req.quant.method, per_channel=req.quant.per_channel,
                            mechanism=check_quant(req.key, req.quant))
    if req.quant.method == "percentile":
        info.percentile = req.quant.percentile
    result = req.export(out, req.quant)
    searching = req.budgets.drives_search() and req.judge is not None
    if not req.overrides and not searching:
        return Outcome(result, info)
    info.keep_float_mechanism = registry.export_path(req.key).keep_float
    layers = quant_layers(req.floating, req.calib, req.quant, result.path)
    forced, warnings = apply_overrides(req.overrides, layers, f"the {req.target} artifact '{out.name}'")
    info.layers = len(layers)
    kept0 = tuple(layer.name for layer in layers if forced.get(layer.name) == "float")
    plain = None
    if kept0:
        info.overrides = {"float": [_title(layers, n) for n in kept0],
                             "int8": [_title(layers, n) for n, p in forced.items() if p == "int8"]}
        plain = relocated(result, scratch("int8_plain"))
        result = req.export(out, replace(req.quant, keep_float=kept0))
    info.keep_float = [_title(layers, n) for n in kept0]
    if not searching:
        return Outcome(result, info, plain=plain, warnings=warnings)

    judge = req.judge
    assert judge is not None
    start = judge.measure(result)
    search = info.search = SearchInfo(before=start.to_dict(), exports=1 + bool(kept0))
    if _excess(start, req.budgets) <= 1.0:
        search.needed, search.met, search.after, search.wall_seconds = False, True, start.to_dict(), _since(started)
        return Outcome(result, info, plain=plain, warnings=warnings)

    candidates = [layer for layer in layers if layer.name not in forced]
    say(f"Ranking {len(candidates)} layers of the {req.target} artifact by sensitivity")
    edits = _Edits(req, result, scratch, layers, judge)

    def with_float(names: tuple[str, ...], tag: str) -> ExportResult:
        edited = edits.keep(names, tag)
        if edited is not None:
            return edited
        search.exports += 1
        return req.export(scratch(tag), replace(req.quant, keep_float=kept0 + names))

    # Up to FEW_LAYERS, each layer is scored alone in int8 on the budget's own metric (an edit and
    # a judging run each, where the path edits): the path's one-run ranking only stands in for it,
    # and on Silero VAD's 19 ONNX layers the search then kept 12 where the tries' ranking holds
    # the limit with 6. Past it, the one-run ranking serves where the path has one.
    few = len(candidates) <= FEW_LAYERS
    added = None if few else edits.added_error(candidates, judge)
    if added is not None:
        # A tensor holding inf or NaN (a log of silence) gives no ratio. Such a layer is ranked
        # first: a log or division quantized near zero is where int8 breaks such a model. Ranked
        # last, basic-pitch's guard search kept all 200 layers in float to hold the limit.
        added = {name: value if math.isfinite(value) else math.inf for name, value in added.items()}
        ranking = sorted(candidates, key=lambda layer: -added.get(layer.name, 0.0))
        search.ranking_method = (f"error each layer adds at its output (noise-to-signal ratio), from one run "
                                 f"of the int8 and float models on {min(RANKING_SAMPLES, judge.samples)} "
                                 "validation samples")
        search.ranking = [{"layer": layer.title, "name": layer.name, "op": layer.op,
                           "added_nsr": round(added.get(layer.name, 0.0), 6)} for layer in ranking]
    else:
        scorer = judge if few else judge.subset(RANKING_SAMPLES)
        scored = _rank(req, candidates, with_float, scorer)
        ranking = [layer for layer, _ in scored]
        search.ranking_method = (f"each layer alone in int8, the rest float, scored on {scorer.samples} "
                                 "validation samples" + (" (edits of the int8 model)" if edits.available else ""))
        search.ranking = [{"layer": layer.title, "name": layer.name, "op": layer.op, **q.to_dict()}
                          for layer, q in scored]
    say(f"Searching for the fewest layers to keep in float ({req.target})")
    tried: dict[int, tuple[ExportResult, Quality]] = {0: (result, start)}
    order = [layer.name for layer in ranking]

    def with_mix(floats: tuple[str, ...], wide: tuple[str, ...], tag: str) -> ExportResult:
        search.exports += 1
        return req.export(scratch(tag), replace(req.quant, keep_float=kept0 + floats, int16_activations=wide))

    # A continuous measure (cosine) on a few samples already tells a try far over the limit; an
    # agreement or accuracy on 16 samples moves in steps of 6 points and tells nothing of the kind.
    early_rejection = "top1_agreement" not in start.fidelity and req.budgets.max_accuracy_drop is None
    partly: set[int] = set()  # tries settled on the first EARLY_SAMPLES samples

    def attempt(k: int) -> bool:
        exported = with_float(tuple(order[:k]), f"keep{k}")
        if not early_rejection:
            tried[k] = (exported, judge.measure(exported))
            return _excess(tried[k][1], req.budgets) <= 1.0
        quality, whole = judge.measure_unless(exported, EARLY_SAMPLES,
                                              lambda q: _excess(q, req.budgets) > EARLY_EXCESS)
        tried[k] = (exported, quality)
        if not whole:
            partly.add(k)
        return whole and _excess(quality, req.budgets) <= 1.0

    first_pass, last_fail, k = None, 0, 1
    while k <= len(order):
        if attempt(k):
            first_pass = k
            break
        last_fail = k
        k = len(order) if k < len(order) < 2 * k else 2 * k
    if first_pass is not None:
        # Fewest: narrow down between the last failure and the first pass, each step alternately
        # where the measured excess crosses 1 on the line between the two (a ranking sorted by
        # added error gives a falling curve) and at the middle, so the bracket always halves.
        interpolate = True
        while first_pass - last_fail > 1:
            mid = _between(last_fail, first_pass, tried, req.budgets) if interpolate else None
            mid = mid if mid is not None else (first_pass + last_fail) // 2
            interpolate = not interpolate
            if attempt(mid):
                first_pass = mid
            else:
                last_fail = mid
    best_k = first_pass if first_pass is not None else min(tried, key=lambda n: (_excess(tried[n][1], req.budgets), n))
    if best_k in partly:  # the best of failed tries is written: its quality is of all samples
        tried[best_k] = (tried[best_k][0], judge.measure(tried[best_k][0]))
        partly.discard(best_k)
    if best_k and edits.available:
        # The artifact is the edit that was measured: the graph the backend's own mechanism writes
        # with those layers excluded, or one with fewer quantizers where it would keep an excluded
        # op's input quantized (onnxruntime does for a Gemm after a quantized op).
        info.keep_float_mechanism = (f"the int8 model edited so those layers read float inputs "
                                     f"({edits.reference}), as {info.keep_float_mechanism} keeps them")
    chosen, quality = tried[best_k]
    precisions = {name: "float" for name in order[:best_k]}
    if first_pass is not None and best_k and req.fallback_cost == "size":
        ladder = _Ladder(req, judge, scratch, with_float, with_mix, result, search)
        chosen, quality, precisions = ladder.lower(tuple(order[:best_k]), chosen, quality)
    search.edits = edits.count
    search.tried = [{"kept_in_float": n, "layers": [_title(layers, name) for name in order[:n]],
                     **tried[n][1].to_dict(), "passed": _excess(tried[n][1], req.budgets) <= 1.0,
                     "samples": EARLY_SAMPLES if n in partly else judge.samples}
                    for n in sorted(tried)]
    if best_k != 0:
        if plain is None:
            plain = relocated(result, scratch("int8_plain"))
        else:
            _remove(result)
        # What the quantizer said of the plain model (the ranges and weights it chose) holds for the edits too.
        result = replace(relocated(chosen, out), notes=[*result.notes, *chosen.notes])
    for n, (exported, _) in tried.items():
        if n != 0 and exported is not chosen:
            _remove(exported)
    # keep_float lists every layer out of int8, as it always has; precisions says which rung each is on.
    info.keep_float = [_title(layers, n) for n in kept0 + tuple(order[:best_k])]
    if any(p != "float" for p in precisions.values()):
        info.precisions = {rung: [_title(layers, n) for n in order[:best_k] if precisions[n] == rung]
                           for rung in LADDER if rung in precisions.values()}
        info.precisions["float"] = [_title(layers, n) for n in kept0 + tuple(order[:best_k])
                                    if precisions.get(n, "float") == "float"]
    search.needed, search.met, search.after = True, first_pass is not None, quality.to_dict()
    search.kept_in_float, search.wall_seconds = best_k, _since(started)
    if first_pass is None:
        warnings.append(f"No number of layers kept in float brought the {req.target} artifact within its budgets "
                        f"(tried {', '.join(str(n) for n in sorted(tried))} of {len(order)}); kept the best try, "
                        f"{best_k} layers in float.")
    return Outcome(result, info, plain=plain if best_k or kept0 else None, warnings=warnings,
                   met=first_pass is not None)


# The rungs between int8 and float a layer the search keeps out of int8 may end on, smallest
# first: int8 weights with 16-bit activations (the size of int8), then fp16 weights. On the CPU
# runtimes both are slower than float (no 16-bit convolution in onnxruntime: PP-OCRv4's detector
# +30% p50 against its 15 guarded layers in float; OpenVINO's CPU plugin with the float layers'
# weights in fp16: mini-Xception +17%), so the ladder serves fallback_cost "size", float "p50".
LADDER = ("int16", "fp16")


class _Ladder:
    """Lowers the layers the search kept in float to the smallest rung that still holds the
    budgets, where the path can: the least sensitive of them first to 16-bit activations (a
    bisection on how many), then the weights of those left in float to fp16 (all or none)."""

    def __init__(self, req: Request, judge: Judge, scratch: Callable[[str], Path],
                 with_float: Callable[[tuple[str, ...], str], ExportResult],
                 with_mix: Callable[[tuple[str, ...], tuple[str, ...], str], ExportResult], plain: ExportResult,
                 search: SearchInfo) -> None:
        record = registry.export_path(req.key)
        self._widen = registry.load(record.int16_edit) if record and record.int16_edit else None
        self._mix = with_mix if record and record.int16_layers and self._widen is None else None
        self._fp16 = registry.load(record.fp16_edit) if record and record.fp16_edit else None
        self._req, self._judge, self._scratch, self._with_float = req, judge, scratch, with_float
        self._plain, self._search = plain, search

    def lower(self, kept: tuple[str, ...], chosen: ExportResult, quality: Quality
              ) -> tuple[ExportResult, Quality, dict[str, str]]:
        """The artifact, its quality and each kept layer's precision, from the float one that held."""
        precisions = {name: "float" for name in kept}
        if self._widen is not None or self._mix is not None:
            best, low, high = 0, 0, len(kept)
            guess = high
            while guess > low:
                tried = self._try_int16(kept, guess)
                if tried is not None and self._holds(tried[1]):
                    if best:
                        _remove(chosen)
                    chosen, quality, best, low = tried[0], tried[1], guess, guess
                else:
                    if tried is not None:
                        _remove(tried[0])
                    high = guess
                guess = (low + high) // 2
            precisions.update({name: "int16" for name in kept[len(kept) - best:]})
        floats = [name for name in kept if precisions[name] == "float"]
        if self._fp16 is not None and floats:
            halved = self._fp16(chosen.path, self._scratch("fp16").with_suffix(chosen.path.suffix))
            if halved is not None:
                measured = self._record("fp16", {"fp16": len(floats), "int16": len(kept) - len(floats)}, halved)
                if self._holds(measured):
                    _remove(chosen)
                    chosen, quality = halved, measured
                    precisions.update({name: "fp16" for name in floats})
                else:
                    _remove(halved)
        return chosen, quality, precisions

    def _try_int16(self, kept: tuple[str, ...], count: int) -> tuple[ExportResult, Quality] | None:
        """The least sensitive ``count`` kept layers at 16-bit activations, the rest float."""
        floats, wide = kept[:len(kept) - count], kept[len(kept) - count:]
        if self._mix is not None:  # the quantizer gives those layers 16-bit activations itself
            try:
                widened = self._mix(floats, wide, f"int16_{count}")
            except ConversionError as exc:  # that mix is beyond the quantizer: the rung stops there
                self._search.ladder = [*(self._search.ladder or []), {
                    "rung": "int16", "int16": count, "float": len(floats), "passed": False,
                    "refused": str(exc).splitlines()[0][:300]}]
                return None
            return widened, self._record("int16", {"int16": count, "float": len(floats)}, widened)
        base = self._with_float(floats, f"int16_{count}_base") if floats else self._plain
        try:
            widened = self._widen(base.path, wide, self._scratch(f"int16_{count}").with_suffix(base.path.suffix))
        finally:
            if base is not self._plain:
                _remove(base)
        if widened is None:
            return None
        return widened, self._record("int16", {"int16": count, "float": len(floats)}, widened)

    def _record(self, rung: str, counts: dict[str, int], exported: ExportResult) -> Quality:
        measured = self._judge.measure(exported)
        self._search.ladder = [*(self._search.ladder or []),
                               {"rung": rung, **counts, **measured.to_dict(), "passed": self._holds(measured)}]
        return measured

    def _holds(self, quality: Quality) -> bool:
        return _excess(quality, self._req.budgets) <= 1.0


class _Edits:
    """Tries made by editing the int8 artifact (``Request.edit``), where the backend can."""

    def __init__(self, req: Request, base: ExportResult, scratch: Callable[[str], Path], layers: list[Layer],
                 judge: Judge) -> None:
        self._req, self._base, self._scratch = req, base, scratch
        self.count = 0
        self._record = registry.export_path(req.key)
        self.reference = self._record.float_edit if self._record else None  # "module:attr", for the report
        self._edit = registry.load(self.reference) if self.reference else None
        self.available = self._edit is not None and self._probe(layers, judge)

    def _probe(self, layers: list[Layer], judge: Judge) -> bool:
        """Edits serve only where every layer edited back to float gives the float model again:
        a graph whose If/Loop bodies read quantized tensors (Silero VAD's) stays 80 points off."""
        probe = self._make(tuple(layer.name for layer in layers), "probe")
        if probe is None:
            return False
        try:
            return judge.subset(RANKING_SAMPLES).measure(probe).fidelity_drop <= EDIT_REACHES_FLOAT
        finally:
            _remove(probe)

    def keep(self, names: tuple[str, ...], tag: str) -> ExportResult | None:
        """The artifact with ``names`` in float, edited; None where edits do not serve."""
        return self._make(names, tag) if self.available else None

    def _make(self, names: tuple[str, ...], tag: str) -> ExportResult | None:
        if self._edit is None:
            return None
        base = self._base
        # The scratch path of an edit carries the artifact's own suffix, as an export's does.
        edited = self._edit(self._req.floating, base.path, names, self._scratch(tag).with_suffix(base.path.suffix))
        if edited is not None:
            self.count += 1
        return edited

    def added_error(self, candidates: list[Layer], judge: Judge) -> dict[str, float] | None:
        """The error each candidate adds, from the path's one-run ranking; None without one."""
        if self._record is None or not self._record.sensitivity:
            return None
        rows = judge.rows(RANKING_SAMPLES)
        return registry.load(self._record.sensitivity)(self._req.floating, self._base.path, candidates, rows)


def _between(fail: int, passed: int, tried: dict[int, tuple[ExportResult, Quality]],
             budgets: BudgetsConfig) -> int | None:
    """The count between ``fail`` and ``passed`` where the excess measured at both crosses 1 on
    the straight line between them; None where the two give no such line."""
    high, low = _excess(tried[fail][1], budgets), _excess(tried[passed][1], budgets)
    if not (math.isfinite(high) and high > 1.0 >= low):
        return None
    guess = fail + round((passed - fail) * (high - 1.0) / (high - low))
    return min(max(guess, fail + 1), passed - 1)


def _sqnr(q: Quality) -> float:
    value = q.fidelity.get("sqnr_db")
    return math.inf if value is None else value


def _rank(req: Request, candidates: list[Layer], with_float: Callable[[tuple[str, ...], str], ExportResult],
          judge: Judge) -> list[tuple[Layer, Quality]]:
    """Each candidate alone in int8 (the other candidates in float), scored at the output; most
    sensitive first. Quantizing one layer also quantizes the tensors it reads and writes, so a
    layer fed or followed by an outlier-heavy tensor shows up here too."""
    scored = []
    for i, layer in enumerate(candidates):
        exported = with_float(tuple(other.name for other in candidates if other.name != layer.name), f"rank{i}")
        try:
            scored.append((layer, judge.measure(exported)))
        finally:
            _remove(exported)
    return sorted(scored, key=lambda item: (-_excess(item[1], req.budgets), _sqnr(item[1])))


def _title(layers: list[Layer], name: str) -> str:
    return next((layer.title for layer in layers if layer.name == name), name)


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 2)


def _remove(exported: ExportResult) -> None:
    for file in (exported.path, *exported.extra_files):
        file.unlink(missing_ok=True)


def require_labels(budgets: BudgetsConfig, subset: cal.Subset | None, origin: str) -> None:
    """max_accuracy_drop compares accuracy, which needs labels in the validation data."""
    if budgets.max_accuracy_drop is not None and (subset is None or subset.labels() is None):
        raise UsageError(f"--max-accuracy-drop needs labelled validation data, and {origin} has no labels.",
                         hint="Add an array named 'labels' to the validation .npz (or pass --val with one), "
                              "or use --max-fidelity-drop, which compares with the source model instead.")
