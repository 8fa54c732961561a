"""`qwen-serve up`'s signal handling: SIGTERM or Ctrl-C asks for a graceful stop; a second
Ctrl-C (during the drain) stops at once; a second SIGTERM changes nothing. And what it
says when it stops Ray's monitors (that they stop is checked on the real stack)."""

from __future__ import annotations

import signal

import pytest

from server.config import parse_config
from server.launcher import Launcher, stop_ray_monitors

DOC = {"pools": {"fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"},
                 "thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu"}}}


@pytest.mark.parametrize("signals, interrupts_at", [
    ([signal.SIGTERM], None),
    ([signal.SIGINT], None),
    ([signal.SIGTERM, signal.SIGTERM], None),
    ([signal.SIGTERM, signal.SIGINT], 1),
    ([signal.SIGINT, signal.SIGINT], 1),
    ([signal.SIGINT, signal.SIGTERM, signal.SIGINT], 2),
])
def test_first_signal_stops_gracefully_second_ctrl_c_stops_now(signals, interrupts_at):
    launcher = Launcher(parse_config(DOC), "test")
    for i, signum in enumerate(signals):
        if i == interrupts_at:
            with pytest.raises(KeyboardInterrupt):
                launcher._on_signal(signum, None)
        else:
            launcher._on_signal(signum, None)
        assert launcher._stop.is_set()


class _Node:
    """Ray's node handle, as far as stop_ray_monitors uses it."""

    def __init__(self, *missing: str) -> None:
        self.missing, self.calls = missing, []

    def __getattr__(self, name):
        if name.startswith("kill_") and name not in self.missing:
            return lambda **kw: self.calls.append((name, kw))
        raise AttributeError(name)


@pytest.mark.parametrize("missing, said, calls", [
    ((), "stopped Ray's autoscaler monitor and log monitor (server.ray_monitors: false)",
     ["kill_monitor", "kill_log_monitor"]),
    (("kill_log_monitor",), "stopped Ray's autoscaler monitor (server.ray_monitors: false); "
     "could not stop Ray's log monitor (left running)", ["kill_monitor"]),
    (("kill_monitor", "kill_log_monitor"),
     "could not stop Ray's autoscaler monitor and log monitor (left running)", []),
])
def test_stop_ray_monitors_says_what_it_stopped(missing, said, calls):
    node = _Node(*missing)
    assert stop_ray_monitors(node) == said
    assert [name for name, _ in node.calls] == calls
    assert all(kw == {"check_alive": False} for _, kw in node.calls)  # one that already exited is fine
