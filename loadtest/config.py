"""Run configuration: one pydantic model that fully describes a load test.

The JSON result file embeds ``RunConfig.model_dump()``; feeding it back with
``qwen-loadtest --config result.json`` repeats the run (same seed, same prompts).
"""

from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional, Tuple

from pydantic import BaseModel, Field, field_validator, model_validator

Mode = Literal["thinking", "fast", "auto"]
MODES: Tuple[str, ...] = ("thinking", "fast", "auto")
EFFORTS: Tuple[str, ...] = ("none", "low", "medium", "high")


class LengthDist(BaseModel):
    """A token length: exact (``min == max``) or uniform over the integer range [min, max]."""

    min: int = Field(ge=1, description="Smallest length in tokens.")
    max: int = Field(ge=1, description="Largest length in tokens (inclusive).")

    @model_validator(mode="after")
    def _order(self) -> "LengthDist":
        if self.max < self.min:
            raise ValueError(f"length range max {self.max} < min {self.min}")
        return self

    @classmethod
    def parse(cls, text: "str | int | LengthDist") -> "LengthDist":
        """``"128"`` -> exactly 128; ``"64:256"`` -> uniform 64..256."""
        if isinstance(text, LengthDist):
            return text
        if isinstance(text, int):
            return cls(min=text, max=text)
        lo, _, hi = str(text).partition(":")
        return cls(min=int(lo), max=int(hi or lo))

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}:{self.max}"


class WorkloadConfig(BaseModel):
    """What the requests contain."""

    kind: Literal["synthetic", "jsonl", "suite"] = Field(
        "synthetic",
        description="synthetic: random prompts of exact token lengths; jsonl: prompts from a "
        "file; suite: the built-in mixed suite (chat, maths, code, multilingual).",
    )
    input_tokens: LengthDist = Field(
        default_factory=lambda: LengthDist(min=128, max=128),
        description="Prompt length in tokens as the server counts it (chat template included "
        "on the chat endpoint), counted with the Qwen3 tokenizer. Synthetic only.",
    )
    output_tokens: LengthDist = Field(
        default_factory=lambda: LengthDist(min=128, max=128),
        description="Completion length in tokens (reasoning included). Sent as max_tokens; "
        "with exact_output also as min_tokens + ignore_eos.",
    )
    exact_output: Optional[bool] = Field(
        None,
        description="Force the exact output length with the vLLM extensions min_tokens and "
        "ignore_eos. Default: on for synthetic, off for jsonl and suite.",
    )
    jsonl_path: Optional[str] = Field(
        None,
        description="JSONL prompt file: one object a line with 'prompt' (text) or 'messages' "
        "(chat list); optional 'max_tokens', 'mode', 'reasoning_effort'.",
    )
    prefix_tokens: int = Field(
        0, ge=0, description="Length of a system prompt shared by every request (prefix caching)."
    )
    turns: int = Field(
        1, ge=1, description="Turns per conversation; each later turn resends the history."
    )
    mode_mix: Dict[str, float] = Field(
        default_factory=lambda: {"auto": 1.0},
        description="Shares of thinking, fast and auto requests (normalised).",
    )
    effort_mix: Dict[str, float] = Field(
        default_factory=lambda: {"none": 1.0},
        description="Shares of reasoning_effort levels (none = field not sent).",
    )
    thinking_via: Literal["kwargs", "alias"] = Field(
        "kwargs",
        description="kwargs: chat_template_kwargs.enable_thinking; alias: send the request "
        "to thinking_model / fast_model instead.",
    )
    thinking_model: Optional[str] = Field(None, description="Model alias for thinking mode.")
    fast_model: Optional[str] = Field(None, description="Model alias for fast mode.")
    tokenizer: Optional[str] = Field(
        None, description="Tokenizer directory; default: Qwen3's real tokenizer."
    )

    @field_validator("input_tokens", "output_tokens", mode="before")
    @classmethod
    def _dist(cls, v):
        return LengthDist.parse(v) if isinstance(v, (str, int)) else v

    @field_validator("mode_mix")
    @classmethod
    def _modes(cls, v: Dict[str, float]) -> Dict[str, float]:
        return _normalise(v, MODES, "mode")

    @field_validator("effort_mix")
    @classmethod
    def _efforts(cls, v: Dict[str, float]) -> Dict[str, float]:
        return _normalise(v, EFFORTS, "reasoning_effort")

    @model_validator(mode="after")
    def _check(self) -> "WorkloadConfig":
        if self.kind == "jsonl" and not self.jsonl_path:
            raise ValueError("workload kind 'jsonl' needs jsonl_path")
        if self.thinking_via == "alias" and not (self.thinking_model and self.fast_model):
            raise ValueError("thinking_via 'alias' needs thinking_model and fast_model")
        return self

    @property
    def force_exact_output(self) -> bool:
        return self.kind == "synthetic" if self.exact_output is None else self.exact_output


class LoadConfig(BaseModel):
    """How the requests are sent."""

    shape: Literal["concurrency", "rate"] = Field(
        "concurrency",
        description="concurrency: closed loop, N requests always in flight; rate: open loop, "
        "requests arrive at a rate whatever the server does.",
    )
    concurrency: int = Field(8, ge=1, description="Closed-loop in-flight requests.")
    rate: float = Field(10.0, gt=0, description="Open-loop arrivals per second.")
    burstiness: float = Field(
        1.0,
        gt=0,
        description="Gamma shape of inter-arrival gaps (as vLLM's benchmark): 1 = Poisson, "
        "<1 burstier, >1 more regular; gap CV = 1/sqrt(burstiness).",
    )
    max_concurrency: Optional[int] = Field(
        None, ge=1, description="Open loop only: cap on requests in flight."
    )
    num_requests: Optional[int] = Field(
        None, ge=1, description="Measured requests (warm-up and cool-down come on top)."
    )
    duration_s: Optional[float] = Field(
        None, gt=0, description="Measured window in seconds (warm-up and cool-down on top)."
    )
    warmup_s: float = Field(0.0, ge=0, description="Seconds of load before the measured window.")
    cooldown_s: float = Field(0.0, ge=0, description="Seconds of load after the measured window.")
    warmup_requests: int = Field(0, ge=0, description="Requests sent before the measured ones.")
    cooldown_requests: int = Field(0, ge=0, description="Requests sent after the measured ones.")
    drain_timeout_s: float = Field(
        120.0, gt=0, description="After sending stops, how long to wait for requests in flight."
    )
    request_timeout_s: float = Field(300.0, gt=0, description="Limit for one request.")
    sweep: Optional[List[float]] = Field(
        None, description="Values of concurrency (or rate) to run one after another."
    )
    saturation_min_gain: float = Field(
        0.05,
        ge=0,
        description="Sweep stops when output throughput grows by less than this fraction over "
        "the best earlier stage.",
    )
    saturation_latency_factor: float = Field(
        5.0,
        gt=1,
        description="...or when median TTFT exceeds this multiple of the first stage's...",
    )
    saturation_latency_floor_ms: float = Field(
        20.0, ge=0, description="...and by more than this many ms (ignores sub-ms noise)..."
    )
    saturation_max_error_rate: float = Field(
        0.05, ge=0, le=1, description="...or when more than this share of requests fail..."
    )
    saturation_min_rate_ratio: float = Field(
        0.9,
        gt=0,
        le=1,
        description="...or (rate sweeps) when the achieved request rate falls below this share "
        "of the offered rate.",
    )

    @model_validator(mode="after")
    def _stop(self) -> "LoadConfig":
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give num_requests or duration_s (or both) so the run ends")
        return self


# MetricsConfig's candidate-name lists, by kind (loadtest.scrape reads them; the CLI has a
# --metric-<role> flag for each).
COUNTER_ROLES = ("requests", "prompt_tokens", "generation_tokens")
HISTOGRAM_ROLES = ("ttft", "tpot", "e2e")
METRIC_ROLES = COUNTER_ROLES + ("kv_cache_usage",) + HISTOGRAM_ROLES


class MetricsConfig(BaseModel):
    """The server's Prometheus endpoint: names are candidate lists, the first present is used."""

    url: Optional[str] = Field(None, description="Prometheus /metrics URL of the server.")
    requests: List[str] = Field(
        default_factory=lambda: ["vllm:request_success_total", "qwen_serve_requests_total"],
        description="Counter of finished requests.",
    )
    prompt_tokens: List[str] = Field(
        default_factory=lambda: ["vllm:prompt_tokens_total", "qwen_serve_prompt_tokens_total"],
        description="Counter of prompt tokens.",
    )
    generation_tokens: List[str] = Field(
        default_factory=lambda: [
            "vllm:generation_tokens_total",
            "qwen_serve_generation_tokens_total",
        ],
        description="Counter of generated tokens.",
    )
    kv_cache_usage: List[str] = Field(
        default_factory=lambda: ["vllm:kv_cache_usage_perc", "qwen_serve_kv_cache_usage_perc"],
        description="Gauge of KV-cache usage (0..1), polled for its peak.",
    )
    ttft: List[str] = Field(
        default_factory=lambda: ["vllm:time_to_first_token_seconds", "qwen_serve_time_to_first_token_seconds"],
        description="Histogram (name without _sum/_count) of time to first token; its mean over "
        "the run is reported beside the client's, so the HTTP path and the client show apart.",
    )
    tpot: List[str] = Field(
        default_factory=lambda: ["vllm:request_time_per_output_token_seconds"],
        description="Histogram of each request's mean time per output token; mean reported "
        "beside the client's.",
    )
    e2e: List[str] = Field(
        default_factory=lambda: ["vllm:e2e_request_latency_seconds", "qwen_serve_request_duration_seconds"],
        description="Histogram of end-to-end request latency; mean reported beside the client's.",
    )
    extra_counters: List[str] = Field(
        default_factory=lambda: ["vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total"],
        description="Further counters whose deltas are reported as they are.",
    )
    labels: Dict[str, str] = Field(
        default_factory=dict, description="Only samples with these label values count."
    )
    poll_interval_s: float = Field(1.0, gt=0, description="Gauge polling period.")
    settle_s: float = Field(
        1.0, ge=0, description="Wait after the last response before the final scrape."
    )


class RunConfig(BaseModel):
    """Everything needed to repeat a run."""

    base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL.")
    api_key: Optional[str] = Field(
        None, description="Bearer token; default: env QWEN_LOADTEST_API_KEY or OPENAI_API_KEY.",
        exclude=True,
    )
    model: str = Field("default", description="Model name sent in each request.")
    endpoint: Literal["chat", "completions"] = Field("chat", description="API endpoint.")
    stream: bool = Field(True, description="Stream (SSE); needed for TTFT/ITL.")
    seed: int = Field(0, description="Seeds prompts, mode mix and arrivals.")
    temperature: Optional[float] = Field(None, description="Sampling temperature, if set.")
    vllm_extensions: bool = Field(
        True, description="Allowed to send vLLM extension fields (min_tokens, ignore_eos)."
    )
    headers: Dict[str, str] = Field(default_factory=dict, description="Extra HTTP headers.")
    slo_ms: Dict[str, float] = Field(
        default_factory=dict,
        description="SLOs for goodput, ms: ttft, ttfa, tpot, itl (max of request), e2el.",
    )
    workload: WorkloadConfig = Field(default_factory=WorkloadConfig)
    load: LoadConfig = Field(default_factory=lambda: LoadConfig(num_requests=100))
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    output_dir: Optional[str] = Field(None, description="Where result files go; none: no files.")
    plots: bool = Field(True, description="Write PNG plots (needs matplotlib).")
    progress: bool = Field(True, description="Progress on stderr.")

    @field_validator("slo_ms")
    @classmethod
    def _slos(cls, v: Dict[str, float]) -> Dict[str, float]:
        known = {"ttft", "ttfa", "tpot", "itl", "e2el"}
        bad = set(v) - known
        if bad:
            raise ValueError(f"unknown SLO metric(s) {sorted(bad)}; known: {sorted(known)}")
        return v

    def resolved_api_key(self) -> Optional[str]:
        return (
            self.api_key
            or os.environ.get("QWEN_LOADTEST_API_KEY")
            or os.environ.get("OPENAI_API_KEY")
        )

    @property
    def url(self) -> str:
        path = "chat/completions" if self.endpoint == "chat" else "completions"
        return self.base_url.rstrip("/") + "/" + path


def _normalise(v: Dict[str, float], known: Tuple[str, ...], what: str) -> Dict[str, float]:
    bad = set(v) - set(known)
    if bad:
        raise ValueError(f"unknown {what}(s) {sorted(bad)}; known: {list(known)}")
    if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
        raise ValueError(f"{what} shares must be >= 0 and not all zero")
    total = sum(v.values())
    return {k: v[k] / total for k in known if v.get(k, 0) > 0}


def parse_mix(text: str) -> Dict[str, float]:
    """``"thinking=0.3,fast=0.7"`` -> ``{"thinking": 0.3, "fast": 0.7}``."""
    out: Dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, val = part.partition("=")
        if not sep:
            raise ValueError(f"mix entry {part!r} is not name=share")
        out[key.strip()] = float(val)
    return out
