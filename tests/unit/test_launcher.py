"""`qwen-serve up`'s signal handling: SIGTERM or Ctrl-C asks for a graceful stop; a second
Ctrl-C (during the drain) stops at once; a second SIGTERM changes nothing."""

from __future__ import annotations

import signal

import pytest

from server.config import parse_config
from server.launcher import Launcher

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
