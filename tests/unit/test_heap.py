"""Freezing a replica's start-up heap: what exists then leaves the collector's walks,
what is allocated later is still collected."""

from __future__ import annotations

import gc
import logging

import pytest

from server.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.other = None


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as before


def _tracked(obj) -> bool:
    return any(o is obj for o in gc.get_objects())


def test_objects_alive_at_start_up_leave_the_collectors_walks(unfrozen, caplog):
    startup = [Node() for _ in range(100)]
    assert _tracked(startup[0])
    walked_before = len(gc.get_objects())
    with caplog.at_level(logging.INFO, logger="qwen_serve.heap"):
        frozen = freeze_startup_heap("test replica")
    assert frozen >= 100 and gc.get_freeze_count() > 0
    assert not _tracked(startup[0])  # a full collection no longer walks it
    assert len(gc.get_objects()) < walked_before - 100
    assert f"test replica: froze {frozen} start-up objects" in caplog.text


def test_garbage_made_after_the_freeze_is_still_collected(unfrozen):
    freeze_startup_heap("test replica")
    a, b = Node(), Node()
    a.other, b.other = b, a  # a reference cycle: only the collector frees it
    del a, b
    assert gc.collect() >= 2
