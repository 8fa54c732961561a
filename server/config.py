"""The one configuration document: server, pools, router, security, limits and metrics.

The same YAML drives ``qwen-serve up``, ``serve run`` (as the application's ``args``) and
Helm's RayService ``serveConfigV2``. Every model forbids unknown keys, so a typo fails
at load time with the field's full path in the message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from server.routing.config import RouterConfig
from server.security_config import LimitsConfig, SecurityConfig

DEFAULT_CONFIG_PATH = Path(__file__).parent / "defaults" / "local.yaml"
APP_IMPORT_PATH = "server.app:build_app"

# Engine arguments that our own fields own; setting them in engine_kwargs is an error.
_RESERVED_ENGINE_KWARGS = {
    "model": "model",
    "served_model_name": "the pool name and router aliases",
    "tensor_parallel_size": "parallelism.tensor_parallel_size",
    "pipeline_parallel_size": "parallelism.pipeline_parallel_size",
    "enable_expert_parallel": "parallelism.enable_expert_parallel",
    "reasoning_parser": "reasoning_parser",
    "distributed_executor_backend": "accelerator",
}


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ServerConfig(StrictModel):
    host: str = Field("0.0.0.0", description="Address the HTTP proxy binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible HTTP endpoint.")
    ray_address: Optional[str] = Field(
        None,
        description="Ray cluster to join ('auto', 'ray://host:10001' or 'host:6379'); "
        "None starts a local Ray instance. On stop, `up` deletes its app from a joined "
        "cluster and leaves the cluster's Serve running.",
    )
    num_cpus: Optional[float] = Field(
        None,
        gt=0,
        description="Logical CPUs a local Ray instance advertises. None: enough for every "
        "pool's placement group plus the ingress (Ray CPU counts are logical, not cores).",
    )
    ray_metrics_port: int = Field(
        8080, ge=1, le=65535, description="Port of Ray's Prometheus exporter (engine and Serve metrics) on a local Ray instance."
    )
    ingress_replicas: int = Field(1, ge=1, description="Replicas of the router/ingress deployment.")
    ingress_max_ongoing_requests: int = Field(
        1024, ge=1, description="Requests one ingress replica handles at once before Serve queues them."
    )
    ingress_num_cpus: float = Field(
        0.5, ge=0, description="Logical CPUs reserved for each ingress replica."
    )
    request_timeout_s: float = Field(
        600.0, gt=0, description="Per-request deadline; on expiry the engine request is aborted."
    )
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="How long in-flight streams may finish when a replica stops."
    )
    startup_timeout_s: float = Field(
        900.0, gt=0, description="How long `qwen-serve up` waits for every pool to become ready."
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of the router and the CLI."
    )
    router_placement: Literal["auto", "pool", "separate"] = Field(
        "auto",
        description="Where the router's HTTP app runs. 'pool': inside the replicas of the only "
        "pool, which call their own engine in-process (no Ray hop per streamed chunk; the "
        "router then has as many replicas as the pool, and ingress_* settings do not apply); "
        "'separate': its own `router` deployment in front of the pools; 'auto': 'pool' when "
        "there is exactly one pool, else 'separate'.",
    )
    direct_ingress: bool = Field(
        True,
        description="`qwen-serve up` with a local Ray only: the router's replicas accept HTTP "
        "themselves (Ray Serve direct ingress), the first on `port` and any more on the next "
        "ports, so requests skip Ray Serve's proxy process; the proxy still runs on "
        "`proxy_port` and balances across all replicas. Off: every request goes through the "
        "proxy on `port`.",
    )
    proxy_port: Optional[int] = Field(
        None,
        ge=1,
        le=65535,
        description="Port of Ray Serve's HTTP proxy when direct_ingress is on (None: the first free port after the "
        "router's ports, outside the kernel's ephemeral range; printed at start-up).",
    )
    ray_monitors: bool = Field(
        False,
        description="`qwen-serve up` with a local Ray only: keep Ray's autoscaler monitor and log "
        "monitor running. Neither has work on a single-node server whose replicas log to files "
        "(one adds and removes nodes, the other forwards workers' output to the driver), and "
        "both wake up several times a second on the cores the engine uses, so they are stopped "
        "once Ray is up. On: Ray's default (also what a joined cluster runs).",
    )


class ParallelismConfig(StrictModel):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs (or CPU workers) one layer is split across.")
    pipeline_parallel_size: int = Field(1, ge=1, description="Pipeline stages; layers are split across them (across nodes on GPUs).")
    enable_expert_parallel: bool = Field(
        False, description="MoE only: place experts across the TP ranks (vLLM expert parallel) instead of sharding each expert."
    )

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class AutoscalingConfig(StrictModel):
    min_replicas: int = Field(1, ge=0, description="Fewest replicas; 0 allows scale to zero.")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    initial_replicas: Optional[int] = Field(None, ge=0, description="Replicas at deploy time (default min_replicas).")
    target_ongoing_requests: float = Field(
        16, gt=0, description="Ongoing requests per replica that Serve's autoscaler aims for."
    )
    upscale_delay_s: float = Field(30.0, ge=0, description="How long load must stay high before adding replicas.")
    downscale_delay_s: float = Field(300.0, ge=0, description="How long load must stay low before removing replicas.")

    @model_validator(mode="after")
    def _check_bounds(self) -> "AutoscalingConfig":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class PlacementConfig(StrictModel):
    bundles: List[Dict[str, float]] = Field(
        description="Ray placement-group bundles for the engine workers, one per worker "
        "(the replica's own CPU is added to the first by Ray Serve LLM)."
    )
    strategy: Literal["PACK", "STRICT_PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="Placement-group strategy."
    )


class PlanRequest(StrictModel):
    gpu: str = Field(description="GPU kind for the sharding planner, e.g. h100, h200, a100-80g, l4, cpu.")
    gpus: int = Field(1, ge=1, description="GPUs per node available to this pool.")
    nodes: int = Field(1, ge=1, description="Nodes available to this pool.")
    dtype: Literal["bf16", "fp8", "int4"] = Field("bf16", description="Weight dtype or quantisation.")
    kv_dtype: Literal["auto", "fp8"] = Field("auto", description="KV-cache dtype.")
    context: Optional[int] = Field(None, ge=256, description="Target context length (default: the model's maximum).")
    concurrency: Optional[int] = Field(
        None, ge=1, description="Target full-context sequences held at once across the whole pool (all replicas)."
    )
    memory_gib: Optional[float] = Field(None, gt=0, description="CPU plans only: RAM budget of one replica in GiB.")


class CpuEngineConfig(StrictModel):
    kvcache_space_gib: int = Field(1, ge=1, description="KV-cache size on the CPU in whole GiB (VLLM_CPU_KVCACHE_SPACE).")
    omp_threads_bind: str = Field(
        "auto",
        description="VLLM_CPU_OMP_THREADS_BIND: 'auto', or one core list per TP rank joined by '|', "
        "e.g. '0|1'. 'auto' binds rank i to core i when tensor_parallel_size > 1.",
    )
    num_cpus_per_worker: float = Field(
        0.5, gt=0, description="Logical Ray CPUs reserved per engine worker in the placement group."
    )


class PoolConfig(StrictModel):
    model: str = Field(
        description="Model source: a built-in tiny test model (tiny-qwen3-dense, tiny-qwen3-moe), "
        "a local checkpoint directory, or a Hugging Face id such as Qwen/Qwen3-30B-A3B."
    )
    tokenizer: Optional[str] = Field(None, description="Tokenizer source if it differs from the model.")
    accelerator: Literal["cpu", "gpu"] = Field("gpu", description="Hardware the engine runs on.")
    accelerator_type: Optional[str] = Field(
        None, description="Ray accelerator type to schedule on (e.g. H100, H200, A100, L4); GPUs only."
    )
    parallelism: ParallelismConfig = Field(default_factory=ParallelismConfig, description="Model sharding.")
    engine_kwargs: Dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM engine arguments (max_model_len, gpu_memory_utilization, "
        "enable_prefix_caching, enforce_eager, kv_cache_dtype, quantization, ...).",
    )
    reasoning_parser: Optional[str] = Field(
        "qwen3", description="vLLM reasoning parser; 'qwen3' splits <think> into the reasoning field. None disables."
    )
    supports_thinking: bool = Field(
        True, description="Whether the model has a thinking mode (Qwen3 hybrid models do; Qwen2.5 does not)."
    )
    replicas: int = Field(1, ge=0, description="Fixed replica count (data parallel); ignored when autoscaling is set.")
    autoscaling: Optional[AutoscalingConfig] = Field(None, description="Serve autoscaling; overrides replicas.")
    max_ongoing_requests: int = Field(
        256, ge=1, description="Requests one replica's engine takes at once (continuous batching width)."
    )
    max_queued_requests: int = Field(
        256, ge=0, description="Requests the router queues for this pool beyond what replicas hold; more get 429/503."
    )
    placement: Optional[PlacementConfig] = Field(None, description="Explicit placement-group bundles; derived when omitted.")
    plan: Optional[PlanRequest] = Field(
        None, description="Let the sharding planner fill parallelism, engine_kwargs, placement and replicas."
    )
    cpu: CpuEngineConfig = Field(default_factory=CpuEngineConfig, description="CPU engine settings (accelerator: cpu).")
    stream_batching_interval_ms: float = Field(
        0.0,
        ge=0,
        description="Ray Serve LLM stream batching; 0 forwards every chunk at once (lowest latency).",
    )
    env: Dict[str, str] = Field(default_factory=dict, description="Extra environment variables for the engine replica.")
    health_check_period_s: float = Field(10.0, gt=0, description="How often Serve checks each replica's engine.")
    health_check_timeout_s: float = Field(30.0, gt=0, description="A health check slower than this fails.")

    @field_validator("engine_kwargs")
    @classmethod
    def _no_reserved(cls, value: Dict[str, Any]) -> Dict[str, Any]:
        for key in value:
            if key in _RESERVED_ENGINE_KWARGS:
                raise ValueError(f"engine_kwargs.{key} is set by the pool's `{_RESERVED_ENGINE_KWARGS[key]}` field instead")
        return value

    @model_validator(mode="after")
    def _check(self) -> "PoolConfig":
        if self.accelerator == "cpu" and self.accelerator_type:
            raise ValueError("accelerator_type applies to GPUs only; remove it or set accelerator: gpu")
        if self.parallelism.enable_expert_parallel and self.parallelism.tensor_parallel_size == 1:
            # vLLM accepts it but it is a no-op: say so rather than silently ignoring.
            raise ValueError("enable_expert_parallel needs tensor_parallel_size > 1 to place experts across ranks")
        return self

    @property
    def served_replicas(self) -> int:
        if self.autoscaling:
            return self.autoscaling.initial_replicas or max(self.autoscaling.min_replicas, 1)
        return self.replicas


class MetricsConfig(StrictModel):
    enabled: bool = Field(True, description="Export the router's Prometheus metrics at /metrics.")
    require_auth: bool = Field(False, description="Whether /metrics needs an API key when keys are configured.")
    ttft_slo_s: float = Field(2.0, gt=0, description="Time-to-first-token SLO; pools over it report degraded.")
    engine_metrics: bool = Field(
        True,
        description="Export vLLM engine metrics (`ray_vllm_*`: KV cache, queues, engine latencies) through "
        "Ray's metrics port; the dashboard and alerts read them. Off: vLLM keeps them in the replica, "
        "unexported, and the engine's host spends less CPU per token (on a 2-core CPU machine about 10% "
        "more throughput at concurrency 8 in one run, none at 32 in another; deploy/PERFORMANCE.md).",
    )
    loop_lag_interval_s: float = Field(
        0.5,
        ge=0,
        description="Seconds between event-loop lag samples of each router replica "
        "(qwen_serve_event_loop_lag_seconds); 0 turns the sampler off.",
    )
    ray_export: bool = Field(
        True,
        description="Also record the router's metrics through Ray Serve's metrics (3-4 us per update in a tight loop, ~20 us between streamed chunks), exported "
        "as ray_qwen_serve_* on every node's Ray metrics port with one series per router replica: exact sums "
        "however many router replicas run (Helm's PodMonitor renames them to qwen_serve_*).",
    )


class AppConfig(StrictModel):
    server: ServerConfig = Field(default_factory=ServerConfig, description="HTTP endpoint and Ray settings.")
    pools: Dict[str, PoolConfig] = Field(description="Engine pools by name; each is one Ray Serve LLM deployment.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="Mode routing: which pool serves which mode.")
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="API keys and per-key limits.")
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Input limits on every request.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus metrics and SLOs.")

    @field_validator("pools")
    @classmethod
    def _pools(cls, value: Dict[str, PoolConfig]) -> Dict[str, PoolConfig]:
        if not value:
            raise ValueError("at least one pool is required")
        for name in value:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"pool name {name!r} may hold only letters, digits, '-' and '_'")
        return value

    @property
    def router_pool(self) -> Optional[str]:
        """The pool whose replicas also serve the router (server.router_placement), or None."""
        placement = self.server.router_placement
        if placement == "separate" or (placement == "auto" and len(self.pools) != 1):
            return None
        return next(iter(self.pools))

    @property
    def router_replicas(self) -> int:
        """Replicas of the router: the host pool's when it runs inside a pool."""
        pool = self.router_pool
        return max(1, self.pools[pool].served_replicas) if pool else self.server.ingress_replicas

    @model_validator(mode="after")
    def _router_pools(self) -> "AppConfig":
        if self.server.router_placement == "pool" and len(self.pools) != 1:
            raise ValueError(
                f"server.router_placement 'pool' needs exactly one pool (there are {len(self.pools)}); "
                "use 'separate' or 'auto'"
            )
        for mode, target in self.router.mode_pools().items():
            if target not in self.pools:
                raise ValueError(
                    f"router.modes.{mode}.pool names {target!r}, which is not a pool "
                    f"(pools: {', '.join(sorted(self.pools))})"
                )
        for alias in self.router.aliases:
            if alias in self.pools:
                raise ValueError(f"router alias {alias!r} clashes with the pool of the same name")
        return self


class ConfigError(ValueError):
    """A configuration document that cannot be loaded; the message names the fields."""


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"]
        if item["type"] == "extra_forbidden":
            msg = "unknown field (not allowed here)"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def extract_app_args(doc: Dict[str, Any]) -> Dict[str, Any]:
    """Accept either our document or a Ray Serve config file that wraps it as ``args``."""
    if isinstance(doc, dict) and "applications" in doc and "pools" not in doc:
        apps = [a for a in doc.get("applications") or [] if a.get("import_path") == APP_IMPORT_PATH]
        if len(apps) != 1:
            raise ConfigError(
                f"Serve config file must hold exactly one application with import_path {APP_IMPORT_PATH!r}"
            )
        return apps[0].get("args") or {}
    return doc


def parse_config(doc: Any, source: str = "<config>") -> AppConfig:
    if not isinstance(doc, dict):
        raise ConfigError(f"invalid configuration in {source}: expected a mapping at the top level")
    try:
        return AppConfig.model_validate(extract_app_args(doc))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: Optional[Union[str, Path]] = None) -> AppConfig:
    """Load and validate a YAML file (our document or a Serve config file that wraps it)."""
    path = Path(path) if path else DEFAULT_CONFIG_PATH
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    return parse_config(doc, str(path))


def config_to_args(config: AppConfig) -> Dict[str, Any]:
    """The document as the ``args`` of a Serve application (round-trips through parse_config)."""
    return config.model_dump(mode="json", exclude_none=True)


def serve_config_file(config: AppConfig, name: str = "qwen-serve") -> Dict[str, Any]:
    """A Ray Serve config file (for `serve run` / `serve deploy`) that wraps the document."""
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": config.server.host, "port": config.server.port},
        "applications": [
            {"name": name, "route_prefix": "/", "import_path": APP_IMPORT_PATH, "args": config_to_args(config)}
        ],
    }
