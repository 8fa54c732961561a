"""Memory arithmetic of one vLLM engine layout: weights, KV cache and overheads per GPU.

Pure functions of a catalog entry and a layout (tensor, pipeline and expert
parallel sizes). ``server/planner.py`` enumerates layouts and picks one; this module
only does the sums, mirroring how vLLM shards a Qwen model:

- tensor parallel (TP) splits q/o projections and MLPs by TP, and the embedding and
  lm_head by vocabulary rows (vLLM pads the vocabulary to a multiple of 64 first);
- K/V projections and the KV cache hold ``max(1, kv_heads / TP)`` heads per GPU: when
  TP exceeds the KV heads, vLLM replicates each KV head on TP / kv_heads GPUs;
- norms, q/k head norms and MoE routers are replicated on every GPU;
- MoE experts: with expert parallel (EP = TP inside one engine) each GPU holds
  ceil(experts / EP) whole experts; without it every expert is split by TP;
- pipeline parallel (PP) splits layers as ``vllm.distributed.utils.get_pp_indices``
  does (extra layers go to the stages before the last); the embedding lives on the
  first stage, final norm and lm_head on the last (both, even when tied, once PP > 1).

Pure: no FastAPI, Ray or vLLM imports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from server.catalog import ModelEntry

GiB = 1 << 30

# Bytes per weight of a linear layer (q/k/v/o, MLP, experts, shared expert), scales
# included: fp8 stores 1 byte plus one fp32 scale per 128x128 block (Qwen's -FP8
# checkpoints; vLLM's online fp8 uses per-tensor scales, even less); int4 (AWQ/GPTQ,
# group size 128) stores half a byte plus an fp16 scale and a 4-bit zero point per group.
LINEAR_BYTES = {"bf16": 2.0, "fp8": 1.0 + 4.0 / (128 * 128), "int4": 0.5 + 2.5 / 128}
# Embedding, lm_head, norms and MoE routers stay in bf16 in all of those checkpoints
# and in vLLM's online fp8 quantisation.
UNQUANTISED_BYTES = 2.0
KV_BYTES = {"bf16": 2, "fp8": 1}
VOCAB_PADDING = 64  # vLLM's DEFAULT_VOCAB_PADDING_SIZE for VocabParallelEmbedding

# --- Estimated non-weight, non-KV memory per GPU (vLLM profiles these at start-up; the
# planner cannot, so it uses these documented, deliberately conservative estimates).
# Activations of the profiling forward pass: bf16, per batched token.
ACTIVATION_BYTES = 2
# The dummy sampler run holds fp32 logits for max_num_seqs rows, plus one working copy.
SAMPLER_LOGIT_COPIES = 2
# CUDA graphs captured by default (vLLM V1, batch sizes up to 512): typically 0.3-1.5 GiB.
CUDA_GRAPH_BYTES = 1 * GiB
# Non-torch allocations that vLLM counts (cuBLAS workspaces, allocator slack).
NON_TORCH_BYTES = GiB // 4
# NCCL and custom all-reduce buffers, when the engine spans more than one GPU.
COMMUNICATION_BYTES = GiB // 2
# CPU engines: engine-core plus worker process baseline (torch, vLLM, tokenizer) that
# sits outside the KV cache; measured at about 0.9 GB + 2 GB for tiny models.
CPU_RUNTIME_BYTES = 3 * GiB


@dataclass(frozen=True)
class Layout:
    """One engine's sharding: TP x PP GPUs, expert parallel on or off."""

    tp: int
    pp: int
    ep: bool = False

    @property
    def gpus(self) -> int:
        return self.tp * self.pp


def kv_heads_per_gpu(entry: ModelEntry, tp: int) -> int:
    """KV heads one GPU holds: kv_heads / TP, or 1 (replicated) when TP > kv_heads."""
    return max(1, entry.config.num_key_value_heads // tp)


def pp_partition(layers: int, pp: int) -> List[int]:
    """Layers per pipeline stage, as vLLM's get_pp_indices splits them."""
    parts = [layers // pp] * pp
    for i in range(2, layers % pp + 2):
        parts[-i] += 1
    return parts


def kv_bytes_per_token(entry: ModelEntry, kv_dtype: str, tp: int = 1, layers: Optional[int] = None) -> int:
    """KV-cache bytes one token takes on one GPU: 2 (K and V) x layers x KV heads x head_dim x bytes.

    ``layers`` defaults to all layers (PP = 1); pass a stage's layer count for PP > 1.
    """
    n_layers = entry.config.num_hidden_layers if layers is None else layers
    return 2 * n_layers * kv_heads_per_gpu(entry, tp) * entry.config.head_dim * KV_BYTES[kv_dtype]


def tp_problems(entry: ModelEntry, tp: int, ep: bool = False) -> List[str]:
    """Why vLLM would reject this TP size for the model (empty when it is valid)."""
    c, moe = entry.config, entry.moe
    out = []
    if c.num_attention_heads % tp:
        out.append(f"{c.num_attention_heads} query heads not divisible by TP={tp}")
    kv = c.num_key_value_heads
    if kv % tp and tp % kv:
        out.append(f"{kv} KV heads neither divisible by nor dividing TP={tp}")
    if moe is None and c.intermediate_size % tp:
        out.append(f"intermediate_size {c.intermediate_size} not divisible by TP={tp}")
    if moe is not None:
        if ep and moe.num_experts % tp:
            out.append(f"{moe.num_experts} experts not divisible by EP={tp}")
        if not ep and moe.moe_intermediate_size % tp:
            out.append(f"moe_intermediate_size {moe.moe_intermediate_size} not divisible by TP={tp}")
        if moe.shared_expert_intermediate_size % tp:
            out.append(f"shared_expert_intermediate_size not divisible by TP={tp}")
    return out


@dataclass(frozen=True)
class StageMemory:
    """Per-GPU bytes of one pipeline stage."""

    layers: int
    weight_bytes: int
    kv_bytes_per_token: int


def stage_memory(entry: ModelEntry, layout: Layout, dtype: str, kv_dtype: str) -> List[StageMemory]:
    """Weight bytes and KV bytes per token on one GPU of each pipeline stage."""
    b = entry.param_breakdown()
    tp, c = layout.tp, entry.config
    lin, raw = LINEAR_BYTES[dtype], UNQUANTISED_BYTES
    kv_frac = kv_heads_per_gpu(entry, tp) / c.num_key_value_heads
    if b.num_experts:
        experts = math.ceil(b.num_experts / tp) * b.expert if layout.ep else b.num_experts * b.expert / tp
    else:
        experts = 0
    layer = (
        lin * ((b.q_proj + b.o_proj + b.dense_mlp + b.shared_expert) / tp + b.kv_proj * kv_frac + experts)
        + raw * (b.qk_norm + b.layer_norms + b.router)
    )
    padded_vocab = -(-c.vocab_size // VOCAB_PADDING) * VOCAB_PADDING
    vocab_shard = raw * padded_vocab // tp * c.hidden_size
    parts = pp_partition(c.num_hidden_layers, layout.pp)
    out = []
    for i, n in enumerate(parts):
        first, last = i == 0, i == len(parts) - 1
        extra = 0.0
        if first:
            extra += vocab_shard
        if last:
            extra += raw * c.hidden_size  # final norm
            if not c.tie_word_embeddings or layout.pp > 1:
                extra += vocab_shard
        out.append(StageMemory(n, int(n * layer + extra), kv_bytes_per_token(entry, kv_dtype, tp, n)))
    return out


def total_weight_bytes(entry: ModelEntry, dtype: str) -> int:
    """All weights of one model copy (unsharded), in bytes."""
    return stage_memory(entry, Layout(1, 1), dtype, "bf16")[0].weight_bytes


def activation_bytes(entry: ModelEntry, layout: Layout, batched_tokens: int, max_num_seqs: int) -> int:
    """Estimated activation peak of vLLM's profiling pass on one GPU.

    Per batched token (bf16): four hidden-size buffers (residual, normed input,
    attention and MLP outputs), the fused q/k/v output, the attention output and the
    MLP intermediate (gate+up plus activation; for MoE, top-k experts' worth, each
    expert whole under EP or split by TP without it). Plus the sampler's fp32 logits
    for ``max_num_seqs`` rows over the full vocabulary.
    """
    c, moe, tp = entry.config, entry.moe, layout.tp
    q_out = c.num_attention_heads * c.head_dim // tp
    kv_out = 2 * kv_heads_per_gpu(entry, tp) * c.head_dim
    if moe:
        width = moe.moe_intermediate_size if layout.ep else moe.moe_intermediate_size // tp
        mlp = moe.num_experts_per_tok * (3 * width + c.hidden_size) + 3 * moe.shared_expert_intermediate_size // tp
    else:
        mlp = 3 * c.intermediate_size // tp
    per_token = 4 * c.hidden_size + q_out + kv_out + q_out + mlp
    logits = SAMPLER_LOGIT_COPIES * max_num_seqs * c.vocab_size * 4
    return batched_tokens * per_token * ACTIVATION_BYTES + logits


def overhead_bytes(
    entry: ModelEntry, layout: Layout, batched_tokens: int, max_num_seqs: int, on_cpu: bool
) -> int:
    """Everything on one device that is neither weights nor KV cache (estimate)."""
    act = activation_bytes(entry, layout, batched_tokens, max_num_seqs)
    if on_cpu:
        return act + CPU_RUNTIME_BYTES
    comm = COMMUNICATION_BYTES if layout.gpus > 1 else 0
    return act + CUDA_GRAPH_BYTES + NON_TORCH_BYTES + comm


def kv_capacity_tokens(free_bytes: float, kv_bytes_per_token_: int, block_size: int) -> int:
    """Tokens of KV cache that ``free_bytes`` hold, in whole blocks (vLLM allocates blocks)."""
    if free_bytes <= 0:
        return 0
    blocks = int(free_bytes // (kv_bytes_per_token_ * block_size))
    return blocks * block_size
