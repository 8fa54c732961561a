"""Fixtures for the load tester's unit tests: the stub server on 127.0.0.1."""

from __future__ import annotations

import pytest

from loadtest.config import LoadConfig, MetricsConfig, RunConfig, WorkloadConfig
from loadtest.stub import running_stub


@pytest.fixture(scope="module")
def stub():
    with running_stub() as s:
        yield s


@pytest.fixture()
def make_cfg(stub):
    """RunConfig against the module's stub; keyword sections override the defaults."""

    def make(load=None, workload=None, metrics=True, **top) -> RunConfig:
        base = f"http://127.0.0.1:{stub.port}"
        return RunConfig(
            base_url=base + "/v1", model="stub", progress=False, plots=False,
            workload=WorkloadConfig(**{"input_tokens": 24, "output_tokens": 8, **(workload or {})}),
            load=LoadConfig(**(load or {"concurrency": 4, "num_requests": 20})),
            metrics=MetricsConfig(url=base + "/metrics" if metrics else None, settle_s=0,
                                  poll_interval_s=0.05),
            **top,
        )

    return make

