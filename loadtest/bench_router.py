"""Router micro-benchmark: the mode decision's cost, and the ingress's per-request overhead.

    python -m loadtest.bench_router [--iterations 2000] [--json FILE]

1. **Decision**: reading the router's signals from a parsed body plus `decide()` (the
   pure scorer and precedence rules), in microseconds, for short prompts and for prompts
   of about 8k tokens, in auto mode (the scorer runs) and with an explicit mode.
2. **Ingress**: the whole FastAPI app of the router (`create_app`) with auth and metrics
   on, over a fake pool backend that answers at once, driven in-process through an ASGI
   client: microseconds per request, streamed (SSE, N token chunks) and not. The same
   client against a minimal Starlette app that returns the same bytes gives the floor,
   so the difference is what our ingress adds before an engine is involved.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import orjson

BENCH_KEY = "sk-bench-router-51f0"
SHORT_PROMPTS = [
    "Hi! How are you today?",
    "What is the capital of Australia?",
    "Translate 'good morning' into French.",
    "Prove that the square root of 2 is irrational.",
    "Write a Python function that merges two sorted lists, step by step.",
    "If a train leaves at 3pm going 60 km/h, when does it arrive 150 km away?",
    "Summarise this paragraph in one sentence: the meeting is moved to Friday.",
    "请一步一步地解这个方程：2x + 3 = 11",
]
_FILLER = (
    "The quarterly report covers revenue, costs and the hiring plan for the next year. "
    "Each team lists its goals, the risks it sees and what it needs from other teams. "
    "def handler(event):\n    return {'status': 200, 'body': event.get('body')}\n"
    "We compare the results with last year's and note where the numbers moved. "
)


def long_prompt(tokens: int = 8192, seed: int = 0) -> str:
    """About `tokens` Qwen3 tokens of mixed prose and code (about 4.3 characters a token)."""
    rng = random.Random(seed)
    words = _FILLER.split(" ")
    out: List[str] = []
    chars = 0
    while chars < tokens * 4.3:
        w = words[rng.randrange(len(words))]
        out.append(w)
        chars += len(w) + 1
    return " ".join(out) + "\nWhat changed the most, and why?"


def _percentiles(samples_ns: List[int]) -> Dict[str, float]:
    s = sorted(samples_ns)
    n = len(s)

    def pct(p: float) -> float:
        k = (n - 1) * p / 100
        lo = int(k)
        hi = min(lo + 1, n - 1)
        return (s[lo] + (s[hi] - s[lo]) * (k - lo)) / 1000.0

    return {"p50_us": pct(50), "p99_us": pct(99), "mean_us": sum(s) / n / 1000.0, "n": n}


def _time(fn: Callable[[], Any], iterations: int) -> Dict[str, float]:
    for _ in range(min(50, iterations)):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return _percentiles(samples)


def bench_config():
    from server.config import parse_config

    os.environ.setdefault("QWEN_SERVE_BENCH_ROUTER_KEYS", f"bench:{BENCH_KEY}")
    return parse_config({
        "pools": {
            "thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu"},
            "fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"},
        },
        "security": {"api_keys_env": "QWEN_SERVE_BENCH_ROUTER_KEYS"},
        "metrics": {"enabled": True},
    }, "bench_router")


def bench_decision(iterations: int) -> Dict[str, Any]:
    from server.ingress import requests as req
    from server.routing.decide import PoolLoad, decide

    config = bench_config()
    load = {name: PoolLoad(in_flight=3, slots=64, queue_limit=64) for name in config.pools}
    hybrid = {name: True for name in config.pools}
    cases = {
        "short, auto": [{"model": "qwen3", "messages": [{"role": "user", "content": p}]} for p in SHORT_PROMPTS],
        "8k tokens, auto": [{"model": "qwen3", "messages": [{"role": "user", "content": long_prompt(seed=i)}]}
                            for i in range(4)],
        "short, explicit fast": [{"model": "qwen3", "chat_template_kwargs": {"enable_thinking": False},
                                  "messages": [{"role": "user", "content": p}]} for p in SHORT_PROMPTS],
    }
    out = {}
    for name, bodies in cases.items():
        i = [0]

        def one() -> None:
            body = bodies[i[0] % len(bodies)]
            i[0] += 1
            decide(req.signals("chat", body), config.router, config.pools, load, supports_thinking=hybrid)

        out[name] = _time(one, iterations)
        out[name]["prompt_chars"] = int(sum(len(b["messages"][0]["content"]) for b in bodies) / len(bodies))
    return out


class _FakeStream:
    """An engine stream as Ray Serve LLM yields it (batching off): one SSE frame per item."""

    def __init__(self, frames: List[str]) -> None:
        self._it = iter(frames)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return [next(self._it)]
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        pass


def sse_frames(tokens: int) -> List[str]:
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "fast"}
    frames = [f"data: {orjson.dumps({**head, 'choices': [{'index': 0, 'delta': {'role': 'assistant', 'content': ''}}]}).decode()}\n\n"]
    for i in range(tokens):
        delta = {"index": 0, "delta": {"content": f" w{i}"}, "logprobs": None, "finish_reason": None}
        frames.append(f"data: {orjson.dumps({**head, 'choices': [delta]}).decode()}\n\n")
    usage = {"prompt_tokens": 20, "completion_tokens": tokens, "total_tokens": 20 + tokens}
    frames.append(f"data: {orjson.dumps({**head, 'choices': [], 'usage': usage}).decode()}\n\n")
    frames.append("data: [DONE]\n\n")
    return frames


class FakeBackend:
    def __init__(self, tokens: int) -> None:
        self.frames = sse_frames(tokens)

    def call(self, kind: str, pool: str, request: Any) -> _FakeStream:
        if getattr(request, "stream", False):
            return _FakeStream(self.frames)
        body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": pool,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}}
        return _FakeStream([body])  # type: ignore[list-item]

    async def check(self, pool: str, timeout_s: float) -> None:
        return None


def floor_app(frames: List[str]):
    """A minimal Starlette app that answers with the same bytes (the ASGI client's own cost)."""
    from starlette.applications import Starlette
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    async def chat(request):
        body = orjson.loads(await request.body())
        if body.get("stream"):
            async def gen():
                for f in frames:
                    yield f.encode()
            return StreamingResponse(gen(), media_type="text/event-stream")
        return Response(b'{"ok":true}', media_type="application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


async def _drive(app, body: bytes, iterations: int, stream: bool) -> Dict[str, float]:
    import httpx

    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        async def one() -> None:
            if stream:
                async with client.stream("POST", "/v1/chat/completions", content=body, headers=headers) as r:
                    async for _ in r.aiter_raw():
                        pass
                    assert r.status_code == 200, r.status_code
            else:
                r = await client.post("/v1/chat/completions", content=body, headers=headers)
                assert r.status_code == 200, (r.status_code, r.text)

        for _ in range(min(50, iterations)):
            await one()
        samples = []
        clock = time.perf_counter_ns
        for _ in range(iterations):
            t0 = clock()
            await one()
            samples.append(clock() - t0)
    return _percentiles(samples)


def bench_ingress(iterations: int, tokens: int) -> Dict[str, Any]:
    from server.ingress.api import create_app

    config = bench_config()
    app = create_app(config, FakeBackend(tokens))
    floor = floor_app(sse_frames(tokens))
    out: Dict[str, Any] = {}
    for stream in (False, True):
        body = orjson.dumps({"model": "qwen3", "stream": stream, "max_tokens": tokens,
                             "messages": [{"role": "user", "content": SHORT_PROMPTS[1]}]})
        label = f"stream, {tokens} chunks" if stream else "not streamed"
        ours = asyncio.run(_drive(app, body, iterations, stream))
        base = asyncio.run(_drive(floor, body, iterations, stream))
        out[label] = {"ingress": ours, "floor": base,
                      "overhead_p50_us": ours["p50_us"] - base["p50_us"],
                      "overhead_per_chunk_us": ((ours["p50_us"] - base["p50_us"]) / (tokens + 3)) if stream else None}
    return out


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_router", description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=2000, help="timed calls per case (decision)")
    p.add_argument("--requests", type=int, default=500, help="timed requests per case (ingress)")
    p.add_argument("--tokens", type=int, default=64, help="token chunks per streamed fake response")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    import logging

    logging.disable(logging.INFO)
    decision = bench_decision(args.iterations)
    print(f"{'mode decision (signals + decide)':<36} {'chars':>7} {'p50 us':>8} {'p99 us':>8}")
    for name, r in decision.items():
        print(f"  {name:<34} {r['prompt_chars']:>7} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f}")
    ingress = bench_ingress(args.requests, args.tokens)
    print(f"\n{'ingress per request (in-process ASGI)':<36} {'ours p50':>9} {'p99':>8} {'floor p50':>10} {'added p50':>10}")
    for name, r in ingress.items():
        print(f"  {name:<34} {r['ingress']['p50_us']:>9.0f} {r['ingress']['p99_us']:>8.0f} "
              f"{r['floor']['p50_us']:>10.0f} {r['overhead_p50_us']:>10.0f}")
    print(f"(microseconds; load average {os.getloadavg()[0]:.2f})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"decision": decision, "ingress": ingress, "loadavg": os.getloadavg()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
