"""The mode decision: a pure function of the request's signals, the config and pool load.

Precedence, strongest first:
  1. explicit: chat_template_kwargs.enable_thinking > reasoning_effort > /think or
     /no_think in the last user message > a mode alias or pool name in `model`;
  2. auto: the prompt scorer, when the alias (or the default mode) is auto;
  3. the configured default mode.
Load: an auto request bound for a saturated thinking pool is downgraded (to fast mode or
a smaller budget, per config) and says so; an explicit request is never downgraded and is
rejected with 429 when its pool is full.
Health: a pool whose last health check failed takes no new requests. An auto request bound
for an unhealthy thinking pool goes to the fast pool (when downgrades go to fast); any
other request for an unhealthy pool is rejected with 503.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Dict, Mapping, Optional, Tuple

from server.routing.config import RouterConfig
from server.routing.scorer import score_prompt

_SOFT_SWITCH = re.compile(r"(?<!\S)/(think|no_think)(?!\S)")


@dataclass(frozen=True)
class RequestSignals:
    """What the router reads from a request (extracted by the ingress, no HTTP types)."""

    model: Optional[str]
    enable_thinking: Optional[bool] = None
    reasoning_effort: Optional[str] = None
    thinking_token_budget: Optional[int] = None
    last_user_text: str = ""
    user_turns: int = 0
    is_chat: bool = True


@dataclass(frozen=True)
class PoolLoad:
    """A pool's load as the tracker sees it: engine slots in use, plus a bounded queue."""

    in_flight: int = 0
    slots: int = 1  # requests the pool's replicas run at once
    queue_limit: int = 0  # requests that may wait beyond the slots
    recent_ttft_s: Optional[float] = None
    healthy: bool = True

    def saturated(self, ratio: float, ttft_slo_s: float) -> bool:
        if self.in_flight >= ratio * self.slots:
            return True
        return self.recent_ttft_s is not None and self.recent_ttft_s > ttft_slo_s

    @property
    def full(self) -> bool:
        return self.in_flight >= self.slots + self.queue_limit


@dataclass(frozen=True)
class Decision:
    mode: str  # "thinking" | "fast"
    pool: str
    reason: str  # short, bounded token for headers and metric labels
    detail: str  # human-readable explanation
    thinking_budget: Optional[int] = None
    explicit: bool = False
    downgraded: bool = False
    score: Optional[float] = None
    signals: Tuple[str, ...] = ()
    reject: Optional[str] = None  # set when the request must be refused
    reject_status: int = 429  # 429: the pool is full; 503: the pool is unhealthy
    retry_after_s: Optional[int] = None
    extra: Dict[str, object] = field(default_factory=dict)


class UnknownModel(LookupError):
    """The request's `model` names neither an alias nor a pool."""


def soft_switch(text: str) -> Optional[bool]:
    """Qwen3's soft switch: the last /think or /no_think in the message wins."""
    if "/think" not in text and "/no_think" not in text:  # C-speed scan; the regex is slow on long text
        return None
    found = _SOFT_SWITCH.findall(text)
    if not found:
        return None
    return found[-1] == "think"


def _effort_budget(effort: str, cfg: RouterConfig) -> Optional[int]:
    return getattr(cfg.effort_budgets, effort, None)


def _explicit_mode(sig: RequestSignals, cfg: RouterConfig, alias_mode: Optional[str]) -> Optional[Tuple[str, str]]:
    if sig.enable_thinking is not None:
        return ("thinking" if sig.enable_thinking else "fast"), "enable_thinking"
    if sig.reasoning_effort is not None:
        return ("fast" if sig.reasoning_effort in ("none", "minimal") else "thinking"), "reasoning_effort"
    if cfg.soft_switches and sig.is_chat:
        switch = soft_switch(sig.last_user_text)
        if switch is not None:
            return ("thinking" if switch else "fast"), "soft_switch"
    if alias_mode in ("thinking", "fast"):
        return alias_mode, "alias"
    return None


def resolve_model(model: Optional[str], cfg: RouterConfig, pools: Mapping[str, object]) -> Tuple[str, Optional[str], bool]:
    """Map `model` to (requested mode, pinned pool or None, whether a mode alias said so)."""
    if model is None or model == "":
        return cfg.default_mode, None, False
    if model in cfg.aliases:
        return cfg.aliases[model], None, True
    if model in pools:
        for mode, mode_cfg in cfg.modes.items():
            if mode_cfg.pool == model:
                return mode, model, False
        return cfg.default_mode, model, False
    raise UnknownModel(model)


def decide(
    sig: RequestSignals,
    cfg: RouterConfig,
    pools: Mapping[str, object],
    load: Mapping[str, PoolLoad],
    *,
    supports_thinking: Mapping[str, bool] = {},
) -> Decision:
    requested, pinned, by_alias = resolve_model(sig.model, cfg, pools)
    explicit = _explicit_mode(sig, cfg, requested if by_alias else None)
    score = None
    signals: Tuple[str, ...] = ()
    if explicit is not None:
        mode, reason = explicit
        detail = f"explicit {reason} -> {mode}"
        is_explicit = True
    elif pinned is not None:
        mode, reason = requested if requested != "auto" else "fast", "pool"
        detail = f"model names pool {pinned} -> {mode}"
        is_explicit = True
    elif requested == "auto":
        result = score_prompt(
            sig.last_user_text,
            sig.user_turns,
            cfg.scorer.weights,
            long_prompt_chars=cfg.scorer.long_prompt_chars,
            long_conversation_turns=cfg.scorer.long_conversation_turns,
            max_scan_chars=cfg.scorer.max_scan_chars,
        )
        score, signals = result.score, result.signals
        mode = "thinking" if result.score >= cfg.scorer.threshold else "fast"
        reason = "auto"
        detail = f"auto {result.explain()} threshold={cfg.scorer.threshold} -> {mode}"
        is_explicit = False
    else:
        mode, reason = requested, "default"
        detail = f"default mode {mode}"
        is_explicit = False

    pool = pinned or cfg.modes[mode].pool
    if mode == "thinking" and not supports_thinking.get(pool, True):
        mode, detail = "fast", detail + f"; pool {pool} has no thinking mode -> fast"

    budget = None
    if mode == "thinking":
        if sig.thinking_token_budget is not None:
            budget = sig.thinking_token_budget
        elif sig.reasoning_effort in ("low", "medium", "high"):
            budget = _effort_budget(sig.reasoning_effort, cfg)
        else:
            budget = cfg.modes["thinking"].thinking_budget

    decision = Decision(
        mode=mode, pool=pool, reason=reason, detail=detail, thinking_budget=budget,
        explicit=is_explicit, score=score, signals=signals,
    )
    return _apply_load(decision, cfg, load)


def _apply_health(d: Decision, cfg: RouterConfig, load: Mapping[str, PoolLoad]) -> Decision:
    fast_pool = cfg.modes["fast"].pool
    fast_load = load.get(fast_pool, PoolLoad())
    can_reroute = (not d.explicit and d.mode == "thinking" and cfg.load.downgrade == "fast"
                   and fast_pool != d.pool and fast_load.healthy)
    if can_reroute and not fast_load.full:
        return _to_fast(d, fast_pool, "unhealthy")
    why = "thinking pool is unhealthy and the fast pool is at capacity" if can_reroute else (
        f"pool {d.pool} is unhealthy (no replica answered the router's last health check)")
    return _replace(d, reject=why, reject_status=429 if can_reroute else 503, retry_after_s=cfg.load.retry_after_s)


def _apply_load(d: Decision, cfg: RouterConfig, load: Mapping[str, PoolLoad]) -> Decision:
    lc = cfg.load
    pool_load = load.get(d.pool, PoolLoad())
    if not pool_load.healthy:
        return _apply_health(d, cfg, load)
    if d.explicit or d.mode != "thinking" or lc.downgrade == "off":
        if pool_load.full:
            return _replace(d, reject=f"pool {d.pool} is at capacity", retry_after_s=lc.retry_after_s)
        return d
    if not pool_load.saturated(lc.saturation_ratio, lc.ttft_slo_s):
        return d
    why = "saturated" if pool_load.in_flight >= lc.saturation_ratio * pool_load.slots else "ttft_over_slo"
    if lc.downgrade == "budget":
        budget = min(x for x in (d.thinking_budget, lc.downgrade_budget) if x is not None)
        if pool_load.full:
            return _replace(d, reject=f"pool {d.pool} is at capacity", retry_after_s=lc.retry_after_s)
        return _replace(
            d, reason="downgrade_budget", thinking_budget=budget, downgraded=True,
            detail=d.detail + f"; thinking pool {why} -> budget {budget}",
        )
    fast_pool = cfg.modes["fast"].pool
    fast_load = load.get(fast_pool, PoolLoad())
    if not fast_load.healthy:  # never downgrade onto a pool that does not answer
        if pool_load.full:
            return _replace(d, reject=f"pool {d.pool} is at capacity", retry_after_s=lc.retry_after_s)
        return d
    if fast_load.full:
        return _replace(d, reject="thinking and fast pools are at capacity", retry_after_s=lc.retry_after_s)
    return _to_fast(d, fast_pool, why)


def _to_fast(d: Decision, fast_pool: str, why: str) -> Decision:
    return _replace(
        d, mode="fast", pool=fast_pool, reason="downgrade_fast", thinking_budget=None, downgraded=True,
        detail=d.detail + f"; thinking pool {why} -> fast",
    )


def _replace(d: Decision, **changes: object) -> Decision:
    return replace(d, **changes)
