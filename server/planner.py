"""Sharding planner: pick TP / PP / EP, replicas and KV-cache headroom for a Qwen model.

Given a catalog model, a GPU kind, GPUs per node and nodes, a weight dtype, a KV-cache
dtype, a target context length and a target concurrency, the planner

1. enumerates layouts: power-of-two TP sizes up to GPUs per node that vLLM accepts
   (see ``sharding.tp_problems``), expert parallel for MoE whenever TP > 1 and the
   experts divide evenly, and pipeline parallel for the largest valid TP: across nodes,
   or within a node when TP cannot grow further;
2. for each layout and pipeline stage computes weight bytes per GPU, KV bytes per
   token per GPU and the tokens of KV cache that fit in
   ``memory x gpu_memory_utilization - weights - overheads`` (``sharding``);
3. picks the plan: among layouts whose replicas together hold ``concurrency``
   sequences of ``context`` tokens, the one with the fewest GPUs per replica (most
   replicas, least communication); when none reaches the target, the one holding the
   most such sequences, preferring fewer GPUs per replica within ``TIE_TOLERANCE``.

Outputs a ``Plan`` whose ``to_pool_fragment()`` is a pool configuration fragment.
Pure: no FastAPI, Ray or vLLM imports.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from server import sharding
from server.catalog import Catalog, GpuKind, ModelEntry, load_catalog, split_quant_suffix
from server.plan_explain import reasons, refusal
from server.sharding import GiB, Layout

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90  # vLLM's default gpu_memory_utilization
# Plans whose capacity is within this fraction of the best count as a tie; the tie goes
# to fewer GPUs per replica, then to no pipeline parallelism.
TIE_TOLERANCE = 0.10

WeightDtype = Literal["bf16", "fp8", "int4"]
KvDtype = Literal["auto", "bf16", "fp8"]


class PlanError(ValueError):
    """No layout fits, or the request itself is impossible; the message has the numbers."""

    def __init__(self, message: str, candidates: Optional[List["Candidate"]] = None) -> None:
        super().__init__(message)
        self.candidates: List[Candidate] = list(candidates or [])


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Candidate(_Out):
    """One evaluated layout."""

    tp: int = Field(description="tensor_parallel_size.")
    pp: int = Field(description="pipeline_parallel_size.")
    ep: bool = Field(description="enable_expert_parallel (MoE with TP > 1 only).")
    gpus_per_replica: int = Field(description="TP x PP.")
    replicas: int = Field(description="Engine replicas the available GPUs hold with this layout.")
    weight_bytes_per_gpu: int = Field(description="Weights on the fullest GPU (largest pipeline stage).")
    kv_bytes_per_token: int = Field(description="KV-cache bytes per token on the fullest GPU.")
    overhead_bytes_per_gpu: int = Field(description="Estimated activations, CUDA graphs and runtime buffers per GPU.")
    usable_bytes_per_gpu: int = Field(description="memory x gpu_memory_utilization (CPU: the RAM budget per rank).")
    kv_tokens: int = Field(description="Tokens of KV cache per replica (smallest stage, whole blocks).")
    max_concurrency: int = Field(description="Sequences of the target context that all replicas hold at once.")
    fits: bool = Field(description="Weights fit and each replica holds at least one full-context sequence.")
    problem: Optional[str] = Field(None, description="Why it does not fit (None when it fits).")


class Plan(_Out):
    """The chosen layout and everything needed to explain and apply it."""

    model: str = Field(description="Checkpoint the pool loads (catalog id or a quantised variant of it).")
    entry: ModelEntry = Field(description="Catalog entry of the model.")
    gpu_kind: str = Field(description="GPU kind name (l4, h100, cpu...).")
    gpu: GpuKind = Field(description="The GPU kind's catalog data.")
    memory_gib: float = Field(description="Device memory used for the plan, GiB (CPU: budget per rank).")
    gpus_per_node: int = Field(description="GPUs (CPU: engine ranks) per node.")
    nodes: int = Field(description="Nodes.")
    dtype: WeightDtype = Field(description="Weight dtype / quantisation.")
    kv_dtype: Literal["bf16", "fp8"] = Field(description="Resolved KV-cache dtype.")
    quantization: Optional[str] = Field(None, description="vLLM `quantization` engine argument, when needed.")
    context: int = Field(description="Target context length (max_model_len).")
    concurrency: Optional[int] = Field(None, description="Target concurrent full-context sequences across replicas.")
    gpu_memory_utilization: float = Field(description="vLLM gpu_memory_utilization assumed.")
    chosen: Candidate = Field(description="The chosen layout.")
    candidates: List[Candidate] = Field(description="Every evaluated layout, the chosen one included.")
    rejected: List[str] = Field(description="TP sizes ruled out and why.")
    reasons: List[str] = Field(description="Why this plan, in words.")

    @property
    def on_cpu(self) -> bool:
        return self.gpu_kind == "cpu"

    def max_num_seqs(self) -> Optional[int]:
        if self.concurrency is None:
            return None
        return max(1, math.ceil(self.concurrency / self.chosen.replicas))

    def to_pool_fragment(self) -> Dict[str, Any]:
        """A pool configuration fragment: paste it under a pool, or let the config apply it."""
        c = self.chosen
        frag: Dict[str, Any] = {"model": self.model, "accelerator": "cpu" if self.on_cpu else "gpu"}
        if not self.on_cpu and self.gpu.ray_accelerator_type:
            frag["accelerator_type"] = self.gpu.ray_accelerator_type
        frag["parallelism"] = {
            "tensor_parallel_size": c.tp,
            "pipeline_parallel_size": c.pp,
            "enable_expert_parallel": c.ep,
        }
        kwargs: Dict[str, Any] = {"max_model_len": self.context}
        if not self.on_cpu:
            kwargs["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.max_num_seqs() is not None:
            kwargs["max_num_seqs"] = self.max_num_seqs()
        if self.kv_dtype == "fp8":
            kwargs["kv_cache_dtype"] = "fp8"
        if self.quantization:
            kwargs["quantization"] = self.quantization
        frag["engine_kwargs"] = kwargs
        frag["reasoning_parser"] = self.entry.reasoning_parser
        frag["supports_thinking"] = self.entry.thinking
        frag["replicas"] = c.replicas
        if self.on_cpu:
            frag["cpu"] = {"kvcache_space_gib": cpu_kv_space_gib(self)}
            bundles = [{"CPU": 1} for _ in range(c.gpus_per_replica)]
        else:
            bundles = [{"GPU": 1, "CPU": 1} for _ in range(c.gpus_per_replica)]
        strategy = "STRICT_PACK" if c.gpus_per_replica <= self.gpus_per_node else "PACK"
        frag["placement"] = {"bundles": bundles, "strategy": strategy}
        return frag


def cpu_kv_space_gib(plan: Plan) -> int:
    """Whole GiB of KV cache per CPU rank (VLLM_CPU_KVCACHE_SPACE takes an integer)."""
    c = plan.chosen
    return int((c.usable_bytes_per_gpu - c.weight_bytes_per_gpu - c.overhead_bytes_per_gpu) // GiB)


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def _replicas(gpus: int, per_node: int, nodes: int) -> int:
    if gpus <= per_node:
        return nodes * (per_node // gpus)
    return (per_node * nodes) // gpus


def _layouts(entry: ModelEntry, per_node: int, nodes: int, rejected: List[str]) -> List[Layout]:
    """Layouts worth evaluating (see the module docstring)."""
    total = per_node * nodes
    tps = []
    tp = 1
    while tp <= per_node:
        ep = entry.is_moe and tp > 1 and entry.moe.num_experts % tp == 0
        problems = sharding.tp_problems(entry, tp, ep)
        if problems:
            rejected.append(f"TP={tp}: " + "; ".join(problems))
        elif per_node % tp == 0:
            tps.append((tp, ep))
        tp *= 2
    if not tps:
        raise PlanError(f"{entry.id}: no valid tensor-parallel size up to {per_node}: " + " | ".join(rejected))
    out = [Layout(tp, 1, ep) for tp, ep in tps]
    tp_max, ep_max = tps[-1]
    for pp in range(2, min(total // tp_max, entry.config.num_hidden_layers) + 1):
        gpus = tp_max * pp
        packs = per_node % gpus == 0 if gpus <= per_node else gpus % per_node == 0 and total % gpus == 0
        if packs:
            out.append(Layout(tp_max, pp, ep_max))
    return out


def _evaluate(
    entry: ModelEntry,
    layout: Layout,
    gpu: GpuKind,
    memory_gib: float,
    util: float,
    per_node: int,
    nodes: int,
    dtype: str,
    kv_dtype: str,
    context: int,
    concurrency: Optional[int],
    on_cpu: bool,
) -> Candidate:
    replicas = _replicas(layout.gpus, per_node, nodes)
    seqs = gpu.default_max_num_seqs if concurrency is None else max(1, math.ceil(concurrency / replicas))
    usable = int(memory_gib * GiB * (1.0 if on_cpu else util))
    overhead = sharding.overhead_bytes(entry, layout, gpu.default_max_num_batched_tokens, seqs, on_cpu)
    stages = sharding.stage_memory(entry, layout, dtype, kv_dtype)
    tokens = []
    for s in stages:
        free = usable - s.weight_bytes - overhead
        if on_cpu:  # the CPU KV cache is sized in whole GiB
            free = (free // GiB) * GiB
        tokens.append(sharding.kv_capacity_tokens(free, s.kv_bytes_per_token, gpu.block_size))
    worst = max(stages, key=lambda s: s.weight_bytes)
    kv_tokens = min(tokens)
    problem = None
    if worst.weight_bytes + overhead > usable:
        problem = (
            f"weights {_gib(worst.weight_bytes)} + overheads {_gib(overhead)} per GPU "
            f"exceed {_gib(usable)} usable"
        )
    elif kv_tokens < context:
        problem = f"only {kv_tokens:,} KV tokens per replica, less than one {context:,}-token sequence"
    return Candidate(
        tp=layout.tp,
        pp=layout.pp,
        ep=layout.ep,
        gpus_per_replica=layout.gpus,
        replicas=replicas,
        weight_bytes_per_gpu=worst.weight_bytes,
        kv_bytes_per_token=max(s.kv_bytes_per_token for s in stages),
        overhead_bytes_per_gpu=overhead,
        usable_bytes_per_gpu=usable,
        kv_tokens=kv_tokens,
        max_concurrency=replicas * (kv_tokens // context),
        fits=problem is None,
        problem=problem,
    )


def _choose(fitting: List[Candidate], concurrency: Optional[int]) -> Candidate:
    target = concurrency or 1
    meets = [c for c in fitting if c.max_concurrency >= target]
    if meets:
        return min(meets, key=lambda c: (c.gpus_per_replica, c.pp, -c.max_concurrency))
    best = max(c.max_concurrency for c in fitting)
    close = [c for c in fitting if c.max_concurrency >= (1 - TIE_TOLERANCE) * best]
    return min(close, key=lambda c: (c.gpus_per_replica, c.pp, -c.max_concurrency))


def plan(
    entry: ModelEntry,
    gpu_kind: str,
    gpus_per_node: int = 1,
    nodes: int = 1,
    dtype: WeightDtype = "bf16",
    kv_dtype: KvDtype = "auto",
    context: Optional[int] = None,
    concurrency: Optional[int] = None,
    *,
    memory_gib: Optional[float] = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    checkpoint: Optional[str] = None,
    quantization: Optional[str] = None,
    catalog: Optional[Catalog] = None,
) -> Plan:
    """Plan one pool. ``memory_gib`` overrides the GPU's memory and is required for ``cpu``."""
    catalog = catalog or load_catalog()
    gpu = catalog.gpu(gpu_kind)
    kind = gpu_kind.lower()
    on_cpu = kind == "cpu"
    if dtype not in sharding.LINEAR_BYTES:
        raise PlanError(f"unknown dtype {dtype!r}; use bf16, fp8 or int4")
    if kv_dtype not in ("auto", "bf16", "fp8"):
        raise PlanError(f"unknown kv dtype {kv_dtype!r}; use auto or fp8")
    if gpus_per_node < 1 or nodes < 1:
        raise PlanError(f"need at least one GPU and one node, got {gpus_per_node} x {nodes}")
    if not 0 < gpu_memory_utilization <= 1:
        raise PlanError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if concurrency is not None and concurrency < 1:
        raise PlanError(f"concurrency must be at least 1, got {concurrency}")
    max_ctx = entry.config.max_position_embeddings
    context = context or max_ctx
    if context > max_ctx:
        raise PlanError(
            f"{entry.id} supports {max_ctx:,} tokens of context (max_position_embeddings); "
            f"{context:,} needs RoPE scaling (YaRN), which the planner does not model"
        )
    if context < 1:
        raise PlanError(f"context must be positive, got {context}")
    kv = ("bf16" if dtype in ("bf16", "int4") else "fp8") if kv_dtype == "auto" else kv_dtype
    if on_cpu:
        if memory_gib is None:
            raise PlanError("cpu plans need a memory budget (memory_gib / --cpu-memory-gib)")
        if dtype != "bf16" or kv != "bf16":
            raise PlanError(f"cpu plans support bf16 weights and KV cache only, got {dtype}/{kv}")
        memory_gib = memory_gib / gpus_per_node
    memory_gib = memory_gib if memory_gib is not None else gpu.memory_gib
    if quantization is None and dtype == "fp8" and checkpoint is None:
        quantization = "fp8"  # online fp8 quantisation of the bf16 checkpoint

    rejected: List[str] = []
    layouts = _layouts(entry, gpus_per_node, nodes, rejected)
    cands = [
        _evaluate(entry, lay, gpu, memory_gib, gpu_memory_utilization, gpus_per_node, nodes,
                  dtype, kv, context, concurrency, on_cpu)
        for lay in layouts
    ]
    fitting = [c for c in cands if c.fits]
    label = f"{gpus_per_node * nodes} x {kind.upper()}" + (f" ({nodes} nodes)" if nodes > 1 else "")
    if not fitting:
        raise PlanError(refusal(entry, dtype, kv, context, cands, label, gpus_per_node * nodes), cands)
    chosen = _choose(fitting, concurrency)
    result = Plan(
        model=checkpoint or entry.id,
        entry=entry,
        gpu_kind=kind,
        gpu=gpu,
        memory_gib=memory_gib,
        gpus_per_node=gpus_per_node,
        nodes=nodes,
        dtype=dtype,
        kv_dtype=kv,
        quantization=quantization,
        context=context,
        concurrency=concurrency,
        gpu_memory_utilization=gpu_memory_utilization,
        chosen=chosen,
        candidates=cands,
        rejected=rejected,
        reasons=[],
    )
    return result.model_copy(update={"reasons": reasons(result)})


def plan_from_request(
    model: str,
    gpu: str,
    gpus: int = 1,
    nodes: int = 1,
    dtype: Optional[str] = None,
    kv_dtype: str = "auto",
    context: Optional[int] = None,
    concurrency: Optional[int] = None,
    memory_gib: Optional[float] = None,
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
    catalog: Optional[Catalog] = None,
) -> Plan:
    """Plan from plain strings, as a config file or CLI gives them.

    ``model`` is a catalog id or alias, or a Qwen quantised checkpoint id
    (``Qwen/Qwen3-8B-FP8``, ``...-AWQ``, ``...-GPTQ-Int4``): its dtype is then implied and
    ``model`` is kept as the checkpoint to load. ``dtype`` defaults to that implied dtype,
    else bf16. For ``gpu="cpu"``, ``memory_gib`` is the RAM budget of one replica.
    """
    catalog = catalog or load_catalog()
    try:
        entry = catalog.model(model)
    except KeyError as exc:
        raise PlanError(str(exc.args[0])) from None
    _, implied, _ = split_quant_suffix(model)
    checkpoint = model if implied and model.lower() != entry.id.lower() else None
    if implied and dtype and dtype != implied:
        raise PlanError(f"{model} is a {implied} checkpoint; --dtype {dtype} contradicts it")
    try:
        return plan(
            entry, gpu, gpus, nodes, dtype or implied or "bf16", kv_dtype, context, concurrency,
            memory_gib=memory_gib, gpu_memory_utilization=gpu_memory_utilization,
            checkpoint=checkpoint, catalog=catalog,
        )
    except KeyError as exc:
        raise PlanError(str(exc.args[0])) from None
