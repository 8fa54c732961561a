"""The test tree itself: pytest imports test modules, and they import their helpers, by
basename (no packages here), so two modules of the same name in different folders stop
the whole run at collection (conftest.py files excepted: pytest keeps them apart)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique():
    names = Counter(p.name for p in TESTS.rglob("*.py") if p.name != "conftest.py" and "__pycache__" not in p.parts)
    assert not [n for n, count in names.items() if count > 1]
