"""Router settings: mode-to-pool map, aliases, thinking budgets, scorer weights, load limits.

Pure pydantic: imported by the pure decision code and by the top-level config.
"""

from __future__ import annotations

from typing import Dict, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

Mode = Literal["thinking", "fast"]
RequestedMode = Literal["auto", "thinking", "fast"]
Effort = Literal["none", "minimal", "low", "medium", "high"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModeConfig(_Strict):
    pool: str = Field(description="Pool that serves this mode.")
    thinking_budget: Optional[int] = Field(
        None,
        ge=1,
        description="Default thinking_token_budget for requests in this mode that set none "
        "(thinking mode only; None leaves thinking unbounded up to max_tokens).",
    )


class EffortBudgets(_Strict):
    low: int = Field(256, ge=1, description="thinking_token_budget for reasoning_effort=low.")
    medium: int = Field(1024, ge=1, description="thinking_token_budget for reasoning_effort=medium.")
    high: Optional[int] = Field(None, ge=1, description="thinking_token_budget for reasoning_effort=high (None: unbounded).")


class ScorerConfig(_Strict):
    threshold: float = Field(0.6, description="Auto mode picks thinking when the prompt's score reaches this.")
    weights: Dict[str, float] = Field(
        default_factory=lambda: {
            "math_notation": 1.0,
            "math_words": 0.7,
            "word_problem": 0.6,
            "proof": 1.2,
            "step_by_step": 1.2,
            "code_block": 0.8,
            "code_words": 0.6,
            "stack_trace": 0.9,
            "multi_step": 0.6,
            "logic_puzzle": 0.8,
            "long_prompt": 0.4,
            "long_conversation": 0.3,
            "chit_chat": -0.8,
            "rewrite_translate": -1.0,
            "lookup": -0.5,
        },
        description="Weight of each signal the scorer detects (see server.routing.scorer.SIGNALS).",
    )
    long_prompt_chars: int = Field(2000, ge=1, description="A last user message longer than this adds `long_prompt`.")
    long_conversation_turns: int = Field(6, ge=1, description="A conversation with this many user turns adds `long_conversation`.")
    max_scan_chars: int = Field(
        2048, ge=256, description="Only the first and last half of this many characters of a message are scanned (bounds cost)."
    )

    @model_validator(mode="after")
    def _known_signals(self) -> "ScorerConfig":
        from server.routing.scorer import SIGNALS

        unknown = sorted(set(self.weights) - set(SIGNALS))
        if unknown:
            raise ValueError(f"unknown scorer signals {unknown}; known: {sorted(SIGNALS)}")
        return self


class LoadConfig(_Strict):
    saturation_ratio: float = Field(
        0.9, gt=0, le=1.0, description="A pool is saturated when in-flight plus queued reach this share of its capacity."
    )
    ttft_slo_s: float = Field(2.0, gt=0, description="Recent TTFT above this also marks a pool saturated.")
    ttft_window: int = Field(32, ge=1, description="How many recent requests the TTFT estimate covers.")
    downgrade: Literal["fast", "budget", "off"] = Field(
        "fast", description="What auto requests get when the thinking pool is saturated: fast mode, a smaller budget, or nothing."
    )
    downgrade_budget: int = Field(128, ge=1, description="thinking_token_budget used when downgrade is `budget`.")
    retry_after_s: int = Field(
        2, ge=1, description="Retry-After sent with 429 when an explicit request's pool is full, and with 503 when it is unhealthy."
    )
    health_check_interval_s: float = Field(
        5.0, ge=0,
        description="How often each router replica checks every pool's engines in the background (0: only when "
        "/health, /ready or /metrics is called). A pool whose check fails takes no new requests until a check "
        "passes (it is checked every second meanwhile): auto requests for it go to the fast pool (when `downgrade` "
        "is fast), the rest get 503 pool_unavailable with Retry-After at once instead of waiting in Serve's queue "
        "until their deadline, and so do requests still waiting for their first token when the check fails.",
    )


class RouterConfig(_Strict):
    default_mode: RequestedMode = Field(
        "auto", description="Mode for requests that say nothing and name no mode alias: auto lets the scorer decide."
    )
    modes: Dict[Mode, ModeConfig] = Field(
        default_factory=lambda: {
            "thinking": ModeConfig(pool="thinking", thinking_budget=None),
            "fast": ModeConfig(pool="fast"),
        },
        description="Pool (and default budget) per mode. Both may name the same hybrid pool.",
    )
    aliases: Dict[str, RequestedMode] = Field(
        default_factory=lambda: {"qwen3": "auto", "qwen3-thinking": "thinking", "qwen3-fast": "fast"},
        description="Model names clients may send, each mapped to a mode; pool names are accepted too.",
    )
    effort_budgets: EffortBudgets = Field(default_factory=EffortBudgets, description="Budgets per reasoning_effort.")
    soft_switches: bool = Field(True, description="Honour Qwen3's /think and /no_think in the last user message.")
    scorer: ScorerConfig = Field(default_factory=ScorerConfig, description="Auto-mode prompt scorer.")
    load: LoadConfig = Field(default_factory=LoadConfig, description="Load-aware downgrades and 429s.")

    @model_validator(mode="after")
    def _both_modes(self) -> "RouterConfig":
        missing = {"thinking", "fast"} - set(self.modes)
        if missing:
            raise ValueError(f"router.modes needs an entry for {sorted(missing)}")
        return self

    def mode_pools(self) -> Dict[str, str]:
        return {mode: cfg.pool for mode, cfg in self.modes.items()}
