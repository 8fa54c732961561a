"""`limits.max_prompt_tokens`: count a request's prompt tokens with its pool's tokenizer.

Chat requests are counted as the engine will see them: the pool tokenizer's chat template
applied to the messages (with tools and chat_template_kwargs), then tokenized. Text
completions count the prompt's tokens (or its token ids). Tokenizers load lazily, once
per pool, off the event loop; tiny test models use the bundled Qwen3 tokenizer files.
Only used when the limit is configured.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Dict, Mapping, Optional

from server.ingress.errors import APIError


def tokenizer_source(pool: Any) -> str:
    from server.models import is_tiny, tokenizer_files_dir

    if pool.tokenizer:
        return pool.tokenizer
    return str(tokenizer_files_dir()) if is_tiny(pool.model) else pool.model


def _load(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


class PromptCounter:
    def __init__(self, pools: Mapping[str, Any], loader: Callable[[str], Any] = _load) -> None:
        self._sources = {name: tokenizer_source(pool) for name, pool in pools.items()}
        self._loader = loader
        self._tokenizers: Dict[str, Any] = {}
        self._lock = threading.Lock()

    def _tokenizer(self, pool: str) -> Any:
        with self._lock:
            if pool not in self._tokenizers:
                self._tokenizers[pool] = self._loader(self._sources[pool])
            return self._tokenizers[pool]

    def count(self, kind: str, pool: str, body: Dict[str, Any]) -> int:
        tok = self._tokenizer(pool)
        if kind == "chat":
            kwargs = dict(body.get("chat_template_kwargs") or {})
            ids = tok.apply_chat_template(
                body["messages"], tools=body.get("tools"), tokenize=True,
                add_generation_prompt=body.get("add_generation_prompt", True),
                continue_final_message=body.get("continue_final_message", False), **kwargs,
            )
            if isinstance(ids, Mapping):  # newer transformers return a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
        total = 0
        for p in prompts:
            if isinstance(p, str):
                total += len(tok.encode(p, add_special_tokens=False))
            elif isinstance(p, list):
                total += len(p)  # token ids
        return total

    async def check(self, kind: str, pool: str, body: Dict[str, Any], limit: Optional[int]) -> None:
        """Raise a 400 when the prompt has more than `limit` tokens (no-op without a limit)."""
        if limit is None:
            return
        try:
            n = await asyncio.to_thread(self.count, kind, pool, body)
        except APIError:
            raise
        except Exception:  # noqa: BLE001 - a body the template cannot render: the engine will say why
            return
        if n > limit:
            param = "messages" if kind == "chat" else "prompt"
            raise APIError(400, f"The prompt has {n} tokens; the limit is {limit}", param=param, code="prompt_too_long")
