"""Fixtures of the Helm chart tests: the chart loaded once, each example rendered once."""

from __future__ import annotations

from typing import Dict

import pytest

from helm_chart import CHART, EXAMPLES, Rendered, helm, load_example, render


@pytest.fixture(scope="session")
def chart():
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render_values(chart):
    """render_values(values) -> Rendered (not cached)."""
    return lambda values=None: render(chart, values)


@pytest.fixture(scope="session")
def rendered_examples(chart) -> Dict[str, Rendered]:
    return {name: render(chart, load_example(name)) for name in EXAMPLES}
