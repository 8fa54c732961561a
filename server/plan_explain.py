"""Words for the sharding planner: why a plan was chosen, and why nothing fits.

Pure: no FastAPI, Ray or vLLM imports.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, List

from server import sharding
from server.catalog import ModelEntry
from server.sharding import GiB

if TYPE_CHECKING:  # pragma: no cover
    from server.planner import Candidate, Plan


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def refusal(entry: ModelEntry, dtype: str, kv: str, context: int, cands: List["Candidate"], label: str,
            total_gpus: int) -> str:
    """The PlanError message when no layout fits: what is needed against what is there."""
    usable = cands[0].usable_bytes_per_gpu
    need = sharding.total_weight_bytes(entry, dtype)
    biggest = max(cands, key=lambda c: c.gpus_per_replica)
    head = f"{entry.id} ({dtype} weights, {kv} KV cache, context {context:,}) does not fit {label}"
    if biggest.weight_bytes_per_gpu + biggest.overhead_bytes_per_gpu > usable:
        return (
            f"{head}: need {_gib(need)} for weights, have {total_gpus} x {_gib(usable)} usable "
            f"({_gib(total_gpus * usable)}); the widest layout TP={biggest.tp} PP={biggest.pp} puts "
            f"{_gib(biggest.weight_bytes_per_gpu)} of weights + {_gib(biggest.overhead_bytes_per_gpu)} of "
            f"overheads on each GPU. Use fp8/int4 weights, more GPUs or a larger GPU kind."
        )
    return (
        f"{head}: weights fit ({_gib(biggest.weight_bytes_per_gpu)} per GPU at TP={biggest.tp} "
        f"PP={biggest.pp}, {_gib(usable)} usable) but only {biggest.kv_tokens:,} tokens of KV cache "
        f"({biggest.kv_bytes_per_token:,} bytes per token per GPU) remain, fewer than one {context:,}-token "
        f"sequence. Lower the context, use an fp8 KV cache, or add GPUs."
    )


def reasons(p: "Plan") -> List[str]:
    """Why the chosen plan, in words, with the numbers behind it."""
    c, e = p.chosen, p.entry
    cfg = e.config
    out = [
        f"{e.id}: {e.param_breakdown().total / 1e9:.2f}B parameters "
        f"({_gib(sharding.total_weight_bytes(e, p.dtype))} of {p.dtype} weights per model copy)",
        f"layout TP={c.tp} PP={c.pp}" + (" with expert parallel" if c.ep else "")
        + f": {_gib(c.weight_bytes_per_gpu)} of weights per GPU, {_gib(c.usable_bytes_per_gpu)} usable"
        + ("" if p.on_cpu else f" ({p.memory_gib:g} GiB x gpu_memory_utilization {p.gpu_memory_utilization:g})"),
    ]
    kv_gpu = sharding.kv_heads_per_gpu(e, c.tp)
    if c.tp > cfg.num_key_value_heads:
        out.append(f"{cfg.num_key_value_heads} KV heads < TP={c.tp}: each KV head is replicated on "
                   f"{c.tp // cfg.num_key_value_heads} GPUs, 1 per GPU")
    out.append(f"KV cache ({p.kv_dtype}): 2 x {math.ceil(cfg.num_hidden_layers / c.pp)} layers x {kv_gpu} KV heads x "
               f"{cfg.head_dim} head_dim x {sharding.KV_BYTES[p.kv_dtype]} bytes = {c.kv_bytes_per_token:,} bytes "
               f"per token per GPU")
    out.append(f"{c.kv_tokens:,} KV tokens per replica = {c.kv_tokens // p.context} sequences of {p.context:,} "
               f"tokens; {c.replicas} replica(s) -> {c.max_concurrency} at full context")
    if c.ep:
        out.append(f"expert parallel: {e.moe.num_experts} experts / {c.tp} ranks = "
                   f"{math.ceil(e.moe.num_experts / c.tp)} whole experts per GPU")
    if p.concurrency and c.max_concurrency < p.concurrency:
        out.append(f"target concurrency {p.concurrency} is not reachable at full context; this layout holds "
                   "the most (shorter requests share the cache, so more may still run)")
    elif p.concurrency:
        out.append(f"meets target concurrency {p.concurrency} with the fewest GPUs per replica "
                   f"({c.gpus_per_replica}); max_num_seqs {p.max_num_seqs()} per replica")
    else:
        out.append(f"no concurrency target: fewest GPUs per replica that fits ({c.gpus_per_replica})")
    if p.kv_dtype == "fp8":
        out.append("kv_cache_dtype fp8 set explicitly (vLLM's 'auto' would keep the KV cache in bf16)")
    if p.dtype == "int4" and p.model == e.id:
        out.append("int4 needs an AWQ or GPTQ checkpoint of this model: set `model` to it "
                   "(e.g. its -AWQ repo); vLLM reads the method from the checkpoint")
    if p.gpu.ray_accelerator_type == "A100":
        out.append("Ray labels every A100 'A100': pin 40 vs 80 GB with a custom resource if nodes are mixed")
    if p.chosen.pp > 1:
        out.append(f"pipeline parallel over {c.pp} stages: layers split as "
                   f"{sharding.pp_partition(cfg.num_hidden_layers, c.pp)}")
    return out
