"""`build_app(args)`: the only place that builds Ray Serve deployments.

One Ray Serve LLM deployment (`LLMServer` wrapping a vLLM engine) per pool, and the
router: either its own ingress deployment in front that holds a handle to each pool, or
(`server.router_placement`, one pool) served by the pool's own replicas, which then call
their engine in-process. `serve run server.app:build_app`, `qwen-serve up` and KubeRay's
serveConfigV2 all call it with the same document (see server/config.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional, Union

from ray import serve
from ray.serve.llm import LLMConfig, build_llm_deployment
from ray.serve.llm.deployment import LLMServer

from server.config import AppConfig, PoolConfig, load_config, parse_config
from server.heap import freeze_startup_heap
from server.metrics import ServeMetrics, ray_metric
from server.models import resolve_model_source
from server.plan_apply import resolve_plans

logger = logging.getLogger("qwen_serve.app")

POOL_DEPLOYMENT_PREFIX = "pool-"
INGRESS_DEPLOYMENT_NAME = "router"

# Environment every engine replica gets: never log prompts (privacy), no usage stats.
BASE_ENGINE_ENV = {
    "RAYLLM_ENABLE_REQUEST_PROMPT_LOGS": "0",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

# Ray Serve settings every replica we build gets (read by the replica process at start):
# our code runs on the replica's own event loop, and so does the router of its outgoing
# handle calls, instead of a second thread and loop each. Otherwise every streamed chunk
# crosses threads (call_soon_threadsafe and a GIL hand-off) on its way out.
SERVE_REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


class PoolServer(LLMServer):
    """Ray Serve LLM's engine server, resolving the pool's model source on the replica.

    A tiny test model is built (once, cached) on the node the replica lands on, and a
    missing local path fails the replica with a message that names it.
    """

    async def __init__(self, llm_config: LLMConfig, **kwargs: Any) -> None:
        data = llm_config.model_dump()
        data["model_loading_config"]["model_source"] = resolve_model_source(
            data["model_loading_config"]["model_source"]
        )
        # A fresh LLMConfig: the engine config cached at build time named the unresolved source.
        await super().__init__(type(llm_config)(**data), **kwargs)
        freeze_startup_heap(f"pool {llm_config.model_id} replica")


def cpu_thread_binding(pool: PoolConfig) -> Optional[str]:
    """VLLM_CPU_OMP_THREADS_BIND for a CPU pool: one core per TP rank when TP > 1."""
    if pool.cpu.omp_threads_bind != "auto":
        return pool.cpu.omp_threads_bind
    tp = pool.parallelism.world_size
    if tp <= 1:
        return None
    return "|".join(str(rank) for rank in range(tp))


def placement_bundles(pool: PoolConfig) -> Dict[str, Any]:
    if pool.placement is not None:
        return {"bundles": pool.placement.bundles, "strategy": pool.placement.strategy}
    workers = pool.parallelism.world_size
    if pool.accelerator == "cpu":
        return {"bundles": [{"CPU": pool.cpu.num_cpus_per_worker} for _ in range(workers)], "strategy": "PACK"}
    strategy = "STRICT_PACK" if pool.parallelism.pipeline_parallel_size == 1 else "PACK"
    return {"bundles": [{"GPU": 1, "CPU": 1} for _ in range(workers)], "strategy": strategy}


def engine_kwargs(pool: PoolConfig) -> Dict[str, Any]:
    kwargs = dict(pool.engine_kwargs)
    kwargs["tensor_parallel_size"] = pool.parallelism.tensor_parallel_size
    kwargs["pipeline_parallel_size"] = pool.parallelism.pipeline_parallel_size
    if pool.parallelism.enable_expert_parallel:
        kwargs["enable_expert_parallel"] = True
    if pool.reasoning_parser:
        kwargs["reasoning_parser"] = pool.reasoning_parser
    if pool.tokenizer:
        kwargs["tokenizer"] = pool.tokenizer
    kwargs.setdefault("enable_prefix_caching", True)
    kwargs.setdefault("enable_log_requests", False)
    return kwargs


def deployment_options(pool: PoolConfig) -> Dict[str, Any]:
    options: Dict[str, Any] = {
        "max_ongoing_requests": pool.max_ongoing_requests,
        "health_check_period_s": pool.health_check_period_s,
        "health_check_timeout_s": pool.health_check_timeout_s,
        "graceful_shutdown_timeout_s": 30,
        "ray_actor_options": {"num_cpus": 0.25 if pool.accelerator == "cpu" else 1},
    }
    if pool.autoscaling is not None:
        a = pool.autoscaling
        options["autoscaling_config"] = {
            "min_replicas": a.min_replicas,
            "max_replicas": a.max_replicas,
            "initial_replicas": a.initial_replicas if a.initial_replicas is not None else a.min_replicas,
            "target_ongoing_requests": a.target_ongoing_requests,
            "upscale_delay_s": a.upscale_delay_s,
            "downscale_delay_s": a.downscale_delay_s,
        }
    else:
        options["num_replicas"] = pool.replicas
    return options


def llm_config_for_pool(name: str, pool: PoolConfig, config: AppConfig) -> LLMConfig:
    """The pool's LLMConfig. When the router runs in this pool's replicas, each replica
    admits the pool's slots plus its queue, so the router's own limits (429 with
    Retry-After) apply rather than a silent queue in Serve's proxy."""
    env = {**BASE_ENGINE_ENV, **SERVE_REPLICA_ENV}
    if pool.accelerator == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(pool.cpu.kvcache_space_gib)
        bind = cpu_thread_binding(pool)
        if bind:
            env["VLLM_CPU_OMP_THREADS_BIND"] = bind
    env.update(pool.env)
    options = deployment_options(pool)
    options["graceful_shutdown_timeout_s"] = config.server.graceful_shutdown_timeout_s
    if config.router_pool == name:
        options["max_ongoing_requests"] = pool.max_ongoing_requests + pool.max_queued_requests
    kwargs: Dict[str, Any] = dict(
        model_loading_config={"model_id": name, "model_source": pool.model},
        engine_kwargs=engine_kwargs(pool),
        placement_group_config=placement_bundles(pool),
        deployment_config=options,
        runtime_env={"env_vars": env},
        experimental_configs={"stream_batching_interval_ms": pool.stream_batching_interval_ms},
        log_engine_metrics=config.metrics.engine_metrics,
    )
    if pool.accelerator == "cpu":
        kwargs["accelerator_config"] = {"kind": "cpu"}
    elif pool.accelerator_type:
        kwargs["accelerator_type"] = pool.accelerator_type
    return LLMConfig(**kwargs)


def router_metrics(config: AppConfig) -> ServeMetrics:
    """One router replica's metrics, mirrored into Ray Serve's metrics when configured."""
    return ServeMetrics(pools=config.pools, mirror=ray_metric if config.metrics.ray_export else None)


@serve.ingress()
class RouterIngress:
    """The router: OpenAI API, mode decisions, auth, limits and metrics (server/ingress/)."""

    def __init__(self, config_args: Dict[str, Any], pools: Dict[str, Any]) -> None:
        from server.ingress.backend import RayPoolBackend

        self._config = parse_config(config_args, "router args")
        self._backend = RayPoolBackend(pools)

    async def __serve_build_asgi_app__(self):
        from server.ingress.api import create_app

        logging.getLogger("qwen_serve").setLevel(self._config.server.log_level)
        app = create_app(self._config, self._backend, router_metrics(self._config))
        freeze_startup_heap("router replica")
        return app


_closing: set = set()  # aclose() tasks of abandoned local streams, kept until they finish


class _LocalStream:
    """The replica's own engine stream, pulled in the caller's task: no Ray hop per item.

    Cancelling the caller (client gone, deadline) cancels the engine request through the
    generators' own CancelledError handling; `cancel()` closes a stream left unfinished.
    """

    __slots__ = ("_start", "_gen")

    def __init__(self, start: Any) -> None:
        self._start = start  # coroutine returning the LLMServer's response generator
        self._gen: Any = None

    def __aiter__(self) -> "_LocalStream":
        return self

    async def __anext__(self) -> Any:
        gen = self._gen
        if gen is None:
            start, self._start = self._start, None
            if start is None:
                raise StopAsyncIteration
            gen = self._gen = await start
        return await gen.__anext__()

    def cancel(self) -> None:
        if self._start is not None:
            self._start.close()
            self._start = None
        gen, self._gen = self._gen, None
        if gen is not None:
            task = asyncio.ensure_future(gen.aclose())
            _closing.add(task)
            task.add_done_callback(_closing.discard)


class LocalPoolBackend:
    """The router's pool backend inside a pool replica: its own pool in-process, any
    other pool through its deployment handle."""

    def __init__(self, name: str, server: LLMServer, others: Dict[str, Any]) -> None:
        from server.ingress.backend import RayPoolBackend

        self._name, self._server = name, server
        self._others = RayPoolBackend(others)

    def call(self, kind: str, pool: str, request: Any) -> Any:
        if pool == self._name:
            return _LocalStream(getattr(self._server, kind)(request))
        return self._others.call(kind, pool, request)

    async def check(self, pool: str, timeout_s: float) -> None:
        if pool == self._name:
            await asyncio.wait_for(self._server.check_health(), timeout_s)
        else:
            await self._others.check(pool, timeout_s)

    def assigned(self, stream: Any) -> bool:
        # The own pool's requests run on this replica's engine from the start: they are
        # taken, and the replica that took them is the one answering this request.
        if isinstance(stream, _LocalStream):
            return True
        return self._others.assigned(stream)


class RouterPoolServer(PoolServer):
    """A pool replica that also serves the router's HTTP app (server.router_placement).

    Requests reach the replica from Ray Serve's proxy, or straight from the client with
    direct ingress, and stream from the engine in the same process, as in vLLM's own
    server: no router replica, no Ray hop and no pickling per streamed chunk.
    """

    async def __init__(self, llm_config: LLMConfig, *, router_args: Dict[str, Any],
                       pools: Optional[Dict[str, Any]] = None, **kwargs: Any) -> None:
        self._router_config = parse_config(router_args, "router args")
        self._other_pools = dict(pools or {})
        await super().__init__(llm_config, **kwargs)
        self._pool_name = llm_config.model_id

    async def __serve_build_asgi_app__(self):
        from server.ingress.api import create_app

        logging.getLogger("qwen_serve").setLevel(self._router_config.server.log_level)
        app = create_app(self._router_config, LocalPoolBackend(self._pool_name, self, self._other_pools),
                         router_metrics(self._router_config))
        freeze_startup_heap(f"pool {self._pool_name} router")
        return app


def build_app(args: Union[Dict[str, Any], AppConfig, None] = None) -> serve.Application:
    """Ray Serve application builder.

    `args` is the configuration document itself, an `AppConfig`, or `{"config_path": FILE}`.
    """
    if isinstance(args, AppConfig):
        config = args
    elif args and set(args) == {"config_path"}:
        config = load_config(args["config_path"])
    elif args:
        config = parse_config(dict(args), "application args")
    else:
        config = load_config()
    config = resolve_plans(config)
    router_args = config.model_dump(mode="json", exclude_none=True)
    host = config.router_pool
    pools: Dict[str, Any] = {}
    for name, pool in config.pools.items():
        if name == host:
            continue
        llm_config = llm_config_for_pool(name, pool, config)
        pools[name] = build_llm_deployment(
            llm_config,
            name_prefix=POOL_DEPLOYMENT_PREFIX,
            deployment_cls=PoolServer,
            override_serve_options={"name": f"{POOL_DEPLOYMENT_PREFIX}{name}"},
        )
    if host is not None:
        return build_llm_deployment(
            llm_config_for_pool(host, config.pools[host], config),
            name_prefix=POOL_DEPLOYMENT_PREFIX,
            deployment_cls=serve.ingress()(RouterPoolServer),
            bind_kwargs={"router_args": router_args, "pools": pools},
            override_serve_options={"name": f"{POOL_DEPLOYMENT_PREFIX}{host}"},
        )
    ingress = serve.deployment(
        RouterIngress,
        name=INGRESS_DEPLOYMENT_NAME,
        num_replicas=config.server.ingress_replicas,
        max_ongoing_requests=config.server.ingress_max_ongoing_requests,
        graceful_shutdown_timeout_s=config.server.graceful_shutdown_timeout_s,
        ray_actor_options={"num_cpus": config.server.ingress_num_cpus,
                           "runtime_env": {"env_vars": dict(SERVE_REPLICA_ENV)}},
    )
    return ingress.bind(router_args, pools)


def pool_deployment_names(config: AppConfig) -> List[str]:
    return [f"{POOL_DEPLOYMENT_PREFIX}{name}" for name in config.pools]


def router_deployment_name(config: AppConfig) -> str:
    """The deployment that serves the router's HTTP app (a pool's, when it hosts it)."""
    host = config.router_pool
    return f"{POOL_DEPLOYMENT_PREFIX}{host}" if host else INGRESS_DEPLOYMENT_NAME
