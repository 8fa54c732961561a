"""Qwen model catalog: published architecture numbers and accelerator kinds.

The data lives in ``server/catalog.yaml``; this module validates it with pydantic
(every field documented, unknown keys rejected), resolves model names (Hugging Face
ids, aliases, quantised-checkpoint suffixes such as ``-FP8``) and counts weight
parameters from the architecture, which the sharding planner (``server/planner.py``)
splits across GPUs.

Pure: no FastAPI, Ray or vLLM imports.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

CATALOG_PATH = Path(__file__).with_name("catalog.yaml")

# Suffixes of Qwen's own quantised checkpoints -> (weight dtype, vLLM quantization
# method that vLLM detects from the checkpoint's config).
QUANT_SUFFIXES: Tuple[Tuple[str, str, str], ...] = (
    ("-fp8", "fp8", "fp8"),
    ("-awq", "int4", "awq"),
    ("-gptq-int4", "int4", "gptq"),
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HFConfig(_Strict):
    """The numbers of a model's published config.json that the planner needs."""

    num_hidden_layers: int = Field(gt=0, description="Decoder layers (num_hidden_layers).")
    hidden_size: int = Field(gt=0, description="Residual stream width (hidden_size).")
    num_attention_heads: int = Field(gt=0, description="Query heads (num_attention_heads).")
    num_key_value_heads: int = Field(gt=0, description="Key/value heads, GQA (num_key_value_heads).")
    head_dim: int = Field(gt=0, description="Width of one attention head (head_dim; hidden/heads for Qwen2).")
    vocab_size: int = Field(gt=0, description="Embedding rows (vocab_size), also the lm_head width.")
    max_position_embeddings: int = Field(gt=0, description="Longest context the config allows natively.")
    intermediate_size: int = Field(gt=0, description="Dense MLP width (unused by all-MoE layers).")
    tie_word_embeddings: bool = Field(description="True when lm_head shares the embedding matrix.")


class MoeConfig(_Strict):
    """Mixture-of-experts numbers from config.json (every decoder layer is sparse)."""

    num_experts: int = Field(gt=0, description="Routed experts per layer (num_experts).")
    num_experts_per_tok: int = Field(gt=0, description="Routed experts each token uses (top-k).")
    moe_intermediate_size: int = Field(gt=0, description="Width of one routed expert's MLP.")
    shared_expert_intermediate_size: int = Field(
        0, ge=0, description="Width of the always-on shared expert (Qwen2-MoE); 0 when none."
    )


class PublishedParams(_Strict):
    """Parameter counts printed on the model card, in billions."""

    total: float = Field(gt=0, description="Total parameters, billions.")
    active: float = Field(gt=0, description="Parameters used per token, billions (= total for dense).")


class ModelEntry(_Strict):
    """One catalog model."""

    id: str = Field(description="Hugging Face repo id (or tiny-* name) that a pool's `model` uses.")
    family: Literal["qwen3", "qwen3-moe", "qwen2.5", "qwen2.5-coder", "qwen2.5-math", "qwen2-moe", "tiny"] = Field(
        description="Model family, for grouping and docs."
    )
    architecture: str = Field(description="config.json architectures[0], e.g. Qwen3MoeForCausalLM.")
    source: str = Field(description="Where the numbers come from: the config.json URL.")
    config: HFConfig = Field(description="Architecture numbers from config.json.")
    moe: Optional[MoeConfig] = Field(None, description="MoE numbers; absent for dense models.")
    attention_bias: bool = Field(description="q/k/v projections carry biases (Qwen2, Qwen2.5).")
    qk_norm: bool = Field(description="Per-head RMSNorm on queries and keys (Qwen3).")
    published_params_b: Optional[PublishedParams] = Field(
        None, description="Model-card parameter counts; absent for the tiny test models."
    )
    thinking: bool = Field(description="Supports hybrid thinking mode (enable_thinking) in its template.")
    reasoning_parser: Optional[str] = Field(
        None, description="vLLM reasoning parser name (qwen3) or null when the model does not think."
    )
    aliases: List[str] = Field(default_factory=list, description="Extra names that resolve to this entry.")

    @model_validator(mode="after")
    def _consistent(self) -> "ModelEntry":
        c = self.config
        if c.num_attention_heads % c.num_key_value_heads:
            raise ValueError(f"{self.id}: query heads {c.num_attention_heads} not a multiple of KV heads")
        if ("Moe" in self.architecture) != (self.moe is not None):
            raise ValueError(f"{self.id}: architecture {self.architecture} and moe section disagree")
        if self.thinking != (self.reasoning_parser is not None):
            raise ValueError(f"{self.id}: thinking models need a reasoning_parser, others none")
        if self.moe and self.moe.num_experts_per_tok > self.moe.num_experts:
            raise ValueError(f"{self.id}: more experts per token than experts")
        return self

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def name(self) -> str:
        """The id without its organisation, e.g. ``Qwen3-8B``."""
        return self.id.split("/")[-1]

    def param_breakdown(self) -> "ParamBreakdown":
        return ParamBreakdown.of(self)


class GpuKind(_Strict):
    """An accelerator kind the planner can place replicas on."""

    description: str = Field(description="Human-readable name of the card.")
    ray_accelerator_type: Optional[str] = Field(
        description="Ray accelerator_type label (L4, A100, H100, H200); null for CPU."
    )
    datasheet_gb: Optional[float] = Field(description="Memory on the data sheet, in the GB NVIDIA quotes (about GiB of physical memory).")
    memory_gib: Optional[float] = Field(
        description="Total memory as torch reports it, GiB (2**30 bytes); null for CPU (given per request)."
    )
    block_size: int = Field(gt=0, description="vLLM's default KV-cache block size, tokens, on this device.")
    default_max_num_batched_tokens: int = Field(
        gt=0, description="vLLM's default max_num_batched_tokens for the OpenAI server on this device."
    )
    default_max_num_seqs: int = Field(gt=0, description="vLLM's default max_num_seqs on this device.")


class Catalog(_Strict):
    """The whole catalog file."""

    gpus: Dict[str, GpuKind] = Field(description="Accelerator kinds by short name (l4, h100, cpu...).")
    models: List[ModelEntry] = Field(description="Catalog models.")

    @model_validator(mode="after")
    def _unique(self) -> "Catalog":
        seen: Dict[str, str] = {}
        for m in self.models:
            for key in _names(m):
                if key in seen and seen[key] != m.id:
                    raise ValueError(f"name {key!r} is used by both {seen[key]} and {m.id}")
                seen[key] = m.id
        return self

    def model(self, name: str) -> ModelEntry:
        """Resolve an id or alias (case-insensitive; quantised suffixes stripped)."""
        entry = self._lookup().get(name.lower())
        if entry is None:
            base, _, _ = split_quant_suffix(name)
            entry = self._lookup().get(base.lower())
        if entry is None:
            raise KeyError(f"unknown model {name!r}; try `plan --list`")
        return entry

    def gpu(self, kind: str) -> GpuKind:
        try:
            return self.gpus[kind.lower()]
        except KeyError:
            raise KeyError(f"unknown GPU kind {kind!r}; known: {', '.join(self.gpus)}") from None

    def _lookup(self) -> Dict[str, ModelEntry]:
        return {key: m for m in self.models for key in _names(m)}


def _names(m: ModelEntry) -> List[str]:
    return sorted({m.id.lower(), m.name.lower(), *(a.lower() for a in m.aliases)})


def split_quant_suffix(name: str) -> Tuple[str, Optional[str], Optional[str]]:
    """``Qwen/Qwen3-8B-FP8`` -> (``Qwen/Qwen3-8B``, ``fp8``, ``fp8``); unquantised names pass."""
    lower = name.lower()
    for suffix, dtype, method in QUANT_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)], dtype, method
    return name, None, None


@functools.lru_cache(maxsize=4)
def load_catalog(path: Optional[str] = None) -> Catalog:
    """Load and validate the catalog (cached per path)."""
    raw = yaml.safe_load(Path(path or CATALOG_PATH).read_text())
    return Catalog.model_validate(raw)


class ParamBreakdown(_Strict):
    """Weight parameters of one model by component; per-layer numbers are for one layer.

    Counted as vLLM and transformers hold them: embedding, lm_head (absent when tied),
    final norm; per layer q/k/v/o projections (+ q/k/v biases for Qwen2/Qwen2.5, + q/k
    head norms for Qwen3), two RMSNorms, and either the dense SwiGLU MLP
    (gate, up, down = 3 x hidden x intermediate) or, for MoE, the router
    (hidden x experts), every routed expert (3 x hidden x moe_intermediate each) and the
    shared expert with its sigmoid gate (hidden x 1) when present.
    """

    embed: int = Field(description="Embedding matrix, vocab x hidden.")
    lm_head: int = Field(description="Output projection, vocab x hidden; 0 when tied to the embedding.")
    final_norm: int = Field(description="Final RMSNorm weight.")
    layers: int = Field(description="Number of decoder layers.")
    q_proj: int = Field(description="Per layer: query projection weight (+ bias).")
    kv_proj: int = Field(description="Per layer: key and value projection weights (+ biases).")
    o_proj: int = Field(description="Per layer: attention output projection weight.")
    qk_norm: int = Field(description="Per layer: q_norm and k_norm weights (one head_dim each).")
    layer_norms: int = Field(description="Per layer: input and post-attention RMSNorm weights.")
    dense_mlp: int = Field(description="Per layer: dense SwiGLU MLP; 0 for MoE.")
    router: int = Field(description="Per layer: MoE router (gate) weight; 0 for dense.")
    expert: int = Field(description="Per layer: ONE routed expert's SwiGLU MLP; 0 for dense.")
    num_experts: int = Field(description="Routed experts per layer (0 for dense).")
    experts_per_tok: int = Field(description="Routed experts per token (0 for dense).")
    shared_expert: int = Field(description="Per layer: shared expert MLP plus its gate; 0 when none.")

    @classmethod
    def of(cls, m: ModelEntry) -> "ParamBreakdown":
        c = m.config
        h, hd = c.hidden_size, c.head_dim
        q_out, kv_out = c.num_attention_heads * hd, c.num_key_value_heads * hd
        bias = m.attention_bias
        moe = m.moe
        shared = 0
        if moe and moe.shared_expert_intermediate_size:
            shared = 3 * h * moe.shared_expert_intermediate_size + h
        return cls(
            embed=c.vocab_size * h,
            lm_head=0 if c.tie_word_embeddings else c.vocab_size * h,
            final_norm=h,
            layers=c.num_hidden_layers,
            q_proj=h * q_out + (q_out if bias else 0),
            kv_proj=2 * (h * kv_out + (kv_out if bias else 0)),
            o_proj=q_out * h,
            qk_norm=2 * hd if m.qk_norm else 0,
            layer_norms=2 * h,
            dense_mlp=0 if moe else 3 * h * c.intermediate_size,
            router=h * moe.num_experts if moe else 0,
            expert=3 * h * moe.moe_intermediate_size if moe else 0,
            num_experts=moe.num_experts if moe else 0,
            experts_per_tok=moe.num_experts_per_tok if moe else 0,
            shared_expert=shared,
        )

    def per_layer(self, experts: int) -> int:
        """Parameters of one decoder layer holding ``experts`` routed experts."""
        return (
            self.q_proj + self.kv_proj + self.o_proj + self.qk_norm + self.layer_norms
            + self.dense_mlp + self.router + experts * self.expert + self.shared_expert
        )

    @property
    def total(self) -> int:
        return self.embed + self.lm_head + self.final_norm + self.layers * self.per_layer(self.num_experts)

    @property
    def active(self) -> int:
        """Parameters a token touches (embedding row lookup counted whole, as model cards do)."""
        return self.embed + self.lm_head + self.final_norm + self.layers * self.per_layer(self.experts_per_tok)
