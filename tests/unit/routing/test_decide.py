"""Table tests of the mode decision's precedence rules, budgets and load handling."""

from __future__ import annotations

import pytest

from server.routing.config import RouterConfig
from server.routing.decide import PoolLoad, RequestSignals, UnknownModel, decide, soft_switch

CFG = RouterConfig.model_validate({
    "modes": {"thinking": {"pool": "big", "thinking_budget": 2048}, "fast": {"pool": "small"}},
})
POOLS = {"big": object(), "small": object()}
IDLE = {"big": PoolLoad(0, 8, 8), "small": PoolLoad(0, 8, 8)}
MATH = "Prove that the square root of 2 is irrational."
CHAT = "hi, how are you?"


def sig(model="qwen3", text=CHAT, **kw):
    return RequestSignals(model=model, last_user_text=text, user_turns=1, **kw)


PRECEDENCE = [
    # (case, signals, mode, reason)
    ("enable_thinking true beats chat text", sig(text=CHAT, enable_thinking=True), "thinking", "enable_thinking"),
    ("enable_thinking false beats maths", sig(text=MATH, enable_thinking=False), "fast", "enable_thinking"),
    ("enable_thinking beats effort", sig(enable_thinking=False, reasoning_effort="high"), "fast", "enable_thinking"),
    ("effort none -> fast", sig(text=MATH, reasoning_effort="none"), "fast", "reasoning_effort"),
    ("effort minimal -> fast", sig(text=MATH, reasoning_effort="minimal"), "fast", "reasoning_effort"),
    ("effort low -> thinking", sig(text=CHAT, reasoning_effort="low"), "thinking", "reasoning_effort"),
    ("effort beats soft switch", sig(text="/no_think " + MATH, reasoning_effort="high"), "thinking", "reasoning_effort"),
    ("soft /no_think beats maths", sig(text=MATH + " /no_think"), "fast", "soft_switch"),
    ("soft /think beats chat", sig(text="/think " + CHAT), "thinking", "soft_switch"),
    ("last soft switch wins", sig(text="/think hmm /no_think"), "fast", "soft_switch"),
    ("soft switch beats fast alias", sig(model="qwen3-fast", text="/think " + CHAT), "thinking", "soft_switch"),
    ("thinking alias", sig(model="qwen3-thinking", text=CHAT), "thinking", "alias"),
    ("fast alias", sig(model="qwen3-fast", text=MATH), "fast", "alias"),
    ("pool name pins its mode", sig(model="big", text=CHAT), "thinking", "pool"),
    ("auto maths -> thinking", sig(text=MATH), "thinking", "auto"),
    ("auto chat -> fast", sig(text=CHAT), "fast", "auto"),
    ("no model uses default (auto)", sig(model=None, text=MATH), "thinking", "auto"),
    ("path-like slash is not a switch", sig(text="see /thinking/path for details"), "fast", "auto"),
]


@pytest.mark.parametrize("case,signals,mode,reason", PRECEDENCE, ids=[p[0] for p in PRECEDENCE])
def test_precedence(case, signals, mode, reason):
    d = decide(signals, CFG, POOLS, IDLE)
    assert (d.mode, d.reason) == (mode, reason)
    assert d.pool == ("big" if mode == "thinking" else "small")
    assert d.detail


def test_default_mode_when_not_auto():
    cfg = CFG.model_copy(update={"default_mode": "fast"})
    d = decide(sig(model=None, text=MATH), cfg, POOLS, IDLE)
    assert (d.mode, d.reason) == ("fast", "default")


def test_unknown_model():
    with pytest.raises(UnknownModel):
        decide(sig(model="gpt-4"), CFG, POOLS, IDLE)


BUDGETS = [
    ("explicit budget wins", sig(enable_thinking=True, thinking_token_budget=77, reasoning_effort="high"), 77),
    ("effort low", sig(reasoning_effort="low"), 256),
    ("effort medium", sig(reasoning_effort="medium"), 1024),
    ("effort high is unbounded", sig(reasoning_effort="high"), None),
    ("mode default", sig(model="qwen3-thinking"), 2048),
    ("fast has no budget", sig(model="qwen3-fast", thinking_token_budget=50), None),
]


@pytest.mark.parametrize("case,signals,budget", BUDGETS, ids=[b[0] for b in BUDGETS])
def test_budgets(case, signals, budget):
    assert decide(signals, CFG, POOLS, IDLE).thinking_budget == budget


def test_pool_without_thinking_serves_fast():
    d = decide(sig(model="qwen3-thinking"), CFG, POOLS, IDLE, supports_thinking={"big": False})
    assert d.mode == "fast"
    assert "no thinking mode" in d.detail


SATURATED = {"big": PoolLoad(8, 8, 8), "small": PoolLoad(0, 8, 8)}
FULL = {"big": PoolLoad(16, 8, 8), "small": PoolLoad(0, 8, 8)}
BOTH_FULL = {"big": PoolLoad(16, 8, 8), "small": PoolLoad(16, 8, 8)}
SLOW = {"big": PoolLoad(1, 8, 8, recent_ttft_s=9.0), "small": PoolLoad(0, 8, 8)}


def test_auto_downgrades_to_fast_when_thinking_saturated():
    d = decide(sig(text=MATH), CFG, POOLS, SATURATED)
    assert (d.mode, d.pool, d.reason, d.downgraded) == ("fast", "small", "downgrade_fast", True)
    assert "saturated" in d.detail
    assert d.thinking_budget is None and d.reject is None


def test_auto_downgrades_on_ttft_over_slo():
    d = decide(sig(text=MATH), CFG, POOLS, SLOW)
    assert d.reason == "downgrade_fast"
    assert "ttft_over_slo" in d.detail


def test_budget_downgrade():
    cfg = CFG.model_copy(update={"load": CFG.load.model_copy(update={"downgrade": "budget", "downgrade_budget": 64})})
    d = decide(sig(text=MATH), cfg, POOLS, SATURATED)
    assert (d.mode, d.pool, d.reason, d.thinking_budget) == ("thinking", "big", "downgrade_budget", 64)


def test_downgrade_off_keeps_thinking_until_full():
    cfg = CFG.model_copy(update={"load": CFG.load.model_copy(update={"downgrade": "off"})})
    assert decide(sig(text=MATH), cfg, POOLS, SATURATED).mode == "thinking"
    assert decide(sig(text=MATH), cfg, POOLS, FULL).reject


@pytest.mark.parametrize("signals", [sig(model="qwen3-thinking"), sig(enable_thinking=True), sig(reasoning_effort="high")])
def test_explicit_is_never_downgraded(signals):
    d = decide(signals, CFG, POOLS, SATURATED)
    assert (d.mode, d.downgraded, d.reject) == ("thinking", False, None)
    full = decide(signals, CFG, POOLS, FULL)
    assert full.mode == "thinking" and full.reject and full.retry_after_s == CFG.load.retry_after_s


def test_auto_rejected_when_both_pools_full():
    d = decide(sig(text=MATH), CFG, POOLS, BOTH_FULL)
    assert d.reject == "thinking and fast pools are at capacity"


def test_fast_request_rejected_only_when_fast_full():
    assert decide(sig(model="qwen3-fast"), CFG, POOLS, FULL).reject is None
    assert decide(sig(model="qwen3-fast"), CFG, POOLS, BOTH_FULL).reject


@pytest.mark.parametrize("text,expected", [
    ("/think", True), ("/no_think", False), ("a /think b /no_think", False), ("a/think", None), ("/thinking", None), ("", None),
])
def test_soft_switch(text, expected):
    assert soft_switch(text) is expected


SICK_THINKING = {"big": PoolLoad(0, 8, 8, healthy=False), "small": PoolLoad(0, 8, 8)}
SICK_FAST = {"big": PoolLoad(0, 8, 8), "small": PoolLoad(0, 8, 8, healthy=False)}


def _with_load(**changes):
    return CFG.model_copy(update={"load": CFG.load.model_copy(update=changes)})


HEALTH = [
    # (case, config, signals, load, (pool, reason, reject_status or None))
    ("auto thinking -> fast while thinking is unhealthy", CFG, sig(text=MATH), SICK_THINKING, ("small", "downgrade_fast", None)),
    ("explicit thinking -> 503", CFG, sig(model="qwen3-thinking"), SICK_THINKING, ("big", "alias", 503)),
    ("enable_thinking -> 503", CFG, sig(enable_thinking=True), SICK_THINKING, ("big", "enable_thinking", 503)),
    ("pool name -> 503", CFG, sig(model="big"), SICK_THINKING, ("big", "pool", 503)),
    ("fast request unaffected", CFG, sig(model="qwen3-fast"), SICK_THINKING, ("small", "alias", None)),
    ("downgrade off -> 503", _with_load(downgrade="off"), sig(text=MATH), SICK_THINKING, ("big", "auto", 503)),
    ("downgrade budget -> 503", _with_load(downgrade="budget"), sig(text=MATH), SICK_THINKING, ("big", "auto", 503)),
    ("rerouting needs room on the fast pool: 429", CFG, sig(text=MATH), {**SICK_THINKING, "small": PoolLoad(16, 8, 8)},
     ("big", "auto", 429)),
    ("fast unhealthy: auto chat -> 503", CFG, sig(text=CHAT), SICK_FAST, ("small", "auto", 503)),
    ("fast unhealthy: explicit fast -> 503", CFG, sig(model="qwen3-fast"), SICK_FAST, ("small", "alias", 503)),
    ("fast unhealthy: saturated thinking is not downgraded onto it", CFG, sig(text=MATH),
     {"big": PoolLoad(8, 8, 8), "small": PoolLoad(0, 8, 8, healthy=False)}, ("big", "auto", None)),
    ("fast unhealthy: full thinking -> 429", CFG, sig(text=MATH),
     {"big": PoolLoad(16, 8, 8), "small": PoolLoad(0, 8, 8, healthy=False)}, ("big", "auto", 429)),
]


@pytest.mark.parametrize("case,cfg,signals,load,expected", HEALTH, ids=[h[0] for h in HEALTH])
def test_unhealthy_pools_take_no_requests(case, cfg, signals, load, expected):
    d = decide(signals, cfg, POOLS, load)
    pool, reason, status = expected
    assert (d.pool, d.reason) == (pool, reason), d.detail
    if status is None:
        assert d.reject is None
    else:
        assert d.reject and d.reject_status == status and d.retry_after_s == cfg.load.retry_after_s
    if reason == "downgrade_fast":
        assert d.downgraded and d.mode == "fast" and d.thinking_budget is None and "unhealthy" in d.detail


def test_hybrid_pool_unhealthy_rejects_both_modes():
    cfg = RouterConfig.model_validate({"modes": {"thinking": {"pool": "big"}, "fast": {"pool": "big"}}})
    load = {"big": PoolLoad(0, 8, 8, healthy=False)}
    for signals in (sig(text=MATH), sig(text=CHAT), sig(model="qwen3-fast")):
        d = decide(signals, cfg, {"big": object()}, load)
        assert d.reject_status == 503 and d.pool == "big"
