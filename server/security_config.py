"""Security and input-limit settings (pure pydantic)."""

from __future__ import annotations

from typing import Dict, Optional

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KeyLimits(_Strict):
    requests_per_minute: Optional[int] = Field(None, ge=1, description="Requests one key may start per minute (None: no limit).")
    tokens_per_minute: Optional[int] = Field(
        None, ge=1, description="Prompt plus max_tokens one key may use per minute (None: no limit)."
    )
    max_concurrency: Optional[int] = Field(None, ge=1, description="Requests one key may have in flight (None: no limit).")


class SecurityConfig(_Strict):
    api_keys_env: Optional[str] = Field(
        None,
        description="Environment variable holding API keys, comma or newline separated; an entry "
        "`name:key` names the key (for per-key limits, logs and metrics). Keys are hashed on load.",
    )
    api_keys_file: Optional[str] = Field(
        None, description="File (e.g. a mounted Secret) holding API keys, one `[name:]key` per line; '#' starts a comment."
    )
    key_limits: KeyLimits = Field(default_factory=KeyLimits, description="Limits applied to each API key separately.")
    per_key_limits: Dict[str, KeyLimits] = Field(
        default_factory=dict, description="Limits for named keys, replacing key_limits for those keys."
    )

    @property
    def auth_configured(self) -> bool:
        return bool(self.api_keys_env or self.api_keys_file)


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted (413 above).")
    max_header_bytes: int = Field(16 * 1024, ge=1024, description="Largest total header size accepted (431 above).")
    max_prompt_tokens: Optional[int] = Field(
        None, ge=1, description="Most prompt tokens per request (None: the pool's context length decides)."
    )
    max_tokens: int = Field(32768, ge=1, description="Largest max_tokens / max_completion_tokens accepted.")
    max_n: int = Field(4, ge=1, description="Largest `n` (choices per request) accepted.")
    max_stop_sequences: int = Field(8, ge=0, description="Most stop sequences per request.")
    max_stop_sequence_chars: int = Field(256, ge=1, description="Longest stop sequence.")
    max_logprobs: int = Field(20, ge=0, description="Largest top_logprobs / logprobs accepted.")
    max_messages: int = Field(512, ge=1, description="Most messages in one chat request.")
