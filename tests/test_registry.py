"""The registry: every entry resolves, every export record is complete, unknown ones fail with the choices named."""

from __future__ import annotations

import pytest

from edgeopt import doctor, registry
from edgeopt.errors import ConversionError
from edgeopt.passes.quantize.config import CALIBRATION_METHODS


def _resolves_to(kind: str, key: str, reference: str) -> None:
    target = registry.resolve(kind, key)
    assert callable(target), f"{reference} is not callable"
    module, attr = reference.split(":")
    assert target.__module__ == module and target.__name__ == attr


@pytest.mark.parametrize("kind, key", registry.entries())
def test_every_entry_resolves_to_a_callable(kind, key):
    _resolves_to(kind, key, registry.reference(kind, key))


@pytest.mark.parametrize("path", registry.EXPORTS, ids=lambda p: p.key)
def test_every_export_record_is_complete(path):
    _resolves_to("converter", path.key, path.convert)
    _resolves_to("quantizer", path.key, path.quantize)
    assert path.requires, f"{path.key} lists no requirements"
    assert "auto" in path.calibration, f"{path.key} has no 'auto' calibration (the backend's own default)"
    assert set(path.calibration) <= set(CALIBRATION_METHODS)
    assert all(isinstance(m, str) and m for m in path.calibration.values())
    # Keeping layers in float needs both the mechanism and the lister of the names it takes.
    assert (path.keep_float is None) == (path.layers is None), f"{path.key}: keep_float and layers go together"
    if path.layers:
        _resolves_to("quant-layers", path.key, path.layers)
    assert registry.export_path(path.key) is path


@pytest.mark.parametrize("records", [registry.LOADERS, registry.EXPORTS, registry.RUNTIMES, registry.PASSES])
def test_one_record_per_key(records):
    keys = [r.key for r in records]
    assert len(keys) == len(set(keys))


def test_records_are_frozen():
    path = registry.export_path("keras->onnx")
    with pytest.raises(Exception):
        path.keep_float = None
    with pytest.raises(TypeError):
        path.calibration["mse"] = "sneaked in"


def test_unknown_entry_names_the_choices():
    with pytest.raises(ConversionError, match="No converter for 'keras->coreml'") as info:
        registry.resolve("converter", "keras->coreml")
    assert "keras->tflite" in info.value.hint
    assert registry.export_path("keras->coreml") is None


def test_available_lists_keys_of_a_kind():
    assert "tflite" in registry.available("runtime")
    assert {"keras_h5", "keras", "saved_model"} <= set(registry.available("loader"))
    assert registry.available("no-such-kind") == []
    assert registry.available("quant-layers") == sorted(p.key for p in registry.EXPORTS if p.layers)


def test_requirements_are_import_and_distribution_names():
    for kind, key in registry.entries():
        needs = registry.requirements(kind, key)
        assert needs or kind == "quant-layers", f"{kind} {key} lists no requirements"
        assert all(isinstance(m, str) and isinstance(d, str) for m, d in needs)
    assert registry.requirements("converter", "keras->coreml") == ()


def test_doctor_lists_every_path_once():
    rows = doctor.path_rows()
    # A path's quantize pass and layer lister need what its converter needs: one row says it.
    expected = [("export" if kind == "converter" else kind, key) for kind, key in registry.entries()
                if kind not in ("quantizer", "quant-layers")]
    assert [(kind, key) for kind, key, _status in rows] == expected
    assert all(registry.requirements("quantizer", key) == registry.requirements("converter", key)
               for kind, key in registry.entries() if kind == "quantizer")


def test_a_float_edit_belongs_to_a_path_that_keeps_layers_in_float():
    for record in registry.EXPORTS:
        if record.float_edit:
            assert record.keep_float and record.layers, record.key
            assert callable(registry.load(record.float_edit)), record.key
        if record.sensitivity:  # a one-run ranking orders the layers a path keeps in float
            assert record.keep_float and record.layers, record.key
            assert callable(registry.load(record.sensitivity)), record.key
