"""The registry: every entry resolves, unknown ones fail with the choices named."""

from __future__ import annotations

import pytest

from edgeopt import doctor, registry
from edgeopt.errors import ConversionError


@pytest.mark.parametrize("kind, key", sorted(registry.ENTRIES))
def test_every_entry_resolves_to_a_callable(kind, key):
    target = registry.resolve(kind, key)
    assert callable(target), f"{registry.ENTRIES[(kind, key)]} is not callable"
    module, attr = registry.ENTRIES[(kind, key)].split(":")
    assert target.__module__ == module and target.__name__ == attr


def test_unknown_entry_names_the_choices():
    with pytest.raises(ConversionError, match="No exporter for 'keras->coreml'") as info:
        registry.resolve("exporter", "keras->coreml")
    assert "keras->tflite" in info.value.hint


def test_available_lists_keys_of_a_kind():
    assert "tflite" in registry.available("runtime")
    assert {"keras_h5", "keras", "saved_model"} <= set(registry.available("loader"))
    assert registry.available("no-such-kind") == []


def test_requirements_describe_registered_entries_only():
    assert set(registry.REQUIRES) <= set(registry.ENTRIES)
    for needs in registry.REQUIRES.values():
        assert needs and all(isinstance(m, str) and isinstance(d, str) for m, d in needs)


def test_doctor_lists_every_entry():
    rows = doctor.path_rows()
    assert [(kind, key) for kind, key, _status in rows] == list(registry.ENTRIES)
