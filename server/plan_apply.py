"""Fill a pool that says `plan: {gpu, gpus, ...}` with the sharding planner's engine config.

The planner's fragment sets parallelism, placement, replicas, the reasoning parser and
(on the CPU) the KV-cache size; engine_kwargs the user wrote win over the planner's.
"""

from __future__ import annotations

from typing import Any, Dict

from server.config import AppConfig, PoolConfig
from server.planner import PlanError, plan_from_request

_PLANNED = ("parallelism", "placement", "replicas")


class PlanApplyError(ValueError):
    pass


def planned_fragment(pool: PoolConfig) -> Dict[str, Any]:
    req = pool.plan
    assert req is not None
    try:
        plan = plan_from_request(
            pool.model, req.gpu, gpus=req.gpus, nodes=req.nodes, dtype=req.dtype, kv_dtype=req.kv_dtype,
            context=req.context, concurrency=req.concurrency, memory_gib=req.memory_gib,
        )
    except PlanError as err:
        raise PlanApplyError(f"plan for {pool.model}: {err}") from None
    return plan.to_pool_fragment()


def apply_plan(pool: PoolConfig) -> PoolConfig:
    clash = [f for f in _PLANNED if f in pool.model_fields_set]
    if clash:
        raise PlanApplyError(f"a pool with `plan:` must not also set {', '.join(clash)}; the planner fills them in")
    frag = planned_fragment(pool)
    data = pool.model_dump(exclude={"plan"}, exclude_none=True)
    data["parallelism"] = frag["parallelism"]
    data["placement"] = frag["placement"]
    data["replicas"] = frag["replicas"]
    data["accelerator"] = frag["accelerator"]
    if "accelerator_type" in frag:
        data["accelerator_type"] = frag["accelerator_type"]
    data["reasoning_parser"] = frag.get("reasoning_parser")
    data["supports_thinking"] = frag.get("supports_thinking", True)
    data["engine_kwargs"] = {**frag.get("engine_kwargs", {}), **pool.engine_kwargs}
    if "cpu" in frag:
        data["cpu"] = {**data.get("cpu", {}), **frag["cpu"]}
    return PoolConfig.model_validate(data)


def resolve_plans(config: AppConfig) -> AppConfig:
    """Fill every pool that asks for `plan:` with the sharding planner's engine config."""
    if not any(p.plan for p in config.pools.values()):
        return config
    pools = {name: apply_plan(pool) if pool.plan else pool for name, pool in config.pools.items()}
    return config.model_copy(update={"pools": pools})
