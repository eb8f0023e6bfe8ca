"""Which conformance cells run: ``make test`` runs the cells each case lists in ``ci`` (the part
that fits CI's time); ``make conformance`` (EDGEOPT_CONFORMANCE=full) runs every cell."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config, items):
    full = os.environ.get("EDGEOPT_CONFORMANCE") == "full"
    for item in items:
        cell = getattr(item, "callspec", None)
        if cell is None or "cell" not in cell.params:
            continue
        case, target = cell.params["cell"]
        item.add_marker(pytest.mark.conformance)
        if target not in case.ci:
            item.add_marker(pytest.mark.conformance_full)
            if not full:
                item.add_marker(pytest.mark.skip(reason="runs in make conformance (EDGEOPT_CONFORMANCE=full)"))
