"""How pool configs become Ray Serve LLM configs (no Ray cluster needed)."""

from __future__ import annotations

import pytest

from server.app import (
    BASE_ENGINE_ENV,
    cpu_thread_binding,
    deployment_options,
    engine_kwargs,
    llm_config_for_pool,
    placement_bundles,
)
from server.config import PoolConfig, load_config, parse_config


def pool(**kw) -> PoolConfig:
    return PoolConfig.model_validate({"model": "tiny-qwen3-moe", **kw})


@pytest.mark.parametrize("kw,bundles,strategy", [
    ({"accelerator": "cpu"}, [{"CPU": 0.5}], "PACK"),
    ({"accelerator": "cpu", "parallelism": {"tensor_parallel_size": 2}}, [{"CPU": 0.5}] * 2, "PACK"),
    ({"accelerator": "gpu", "parallelism": {"tensor_parallel_size": 4}}, [{"GPU": 1, "CPU": 1}] * 4, "STRICT_PACK"),
    ({"accelerator": "gpu", "parallelism": {"tensor_parallel_size": 8, "pipeline_parallel_size": 2}}, [{"GPU": 1, "CPU": 1}] * 16, "PACK"),
    ({"placement": {"bundles": [{"GPU": 1}], "strategy": "SPREAD"}}, [{"GPU": 1}], "SPREAD"),
])
def test_placement_bundles(kw, bundles, strategy):
    assert placement_bundles(pool(**kw)) == {"bundles": bundles, "strategy": strategy}


@pytest.mark.parametrize("kw,expected", [
    ({"accelerator": "cpu"}, None),
    ({"accelerator": "cpu", "parallelism": {"tensor_parallel_size": 2}}, "0|1"),
    ({"accelerator": "cpu", "parallelism": {"tensor_parallel_size": 2}, "cpu": {"omp_threads_bind": "0-1|2-3"}}, "0-1|2-3"),
])
def test_cpu_thread_binding(kw, expected):
    assert cpu_thread_binding(pool(**kw)) == expected


def test_engine_kwargs_carry_parallelism_and_parser():
    p = pool(parallelism={"tensor_parallel_size": 2, "pipeline_parallel_size": 2, "enable_expert_parallel": True},
             engine_kwargs={"max_model_len": 4096})
    kw = engine_kwargs(p)
    assert kw["tensor_parallel_size"] == 2 and kw["pipeline_parallel_size"] == 2
    assert kw["enable_expert_parallel"] is True
    assert kw["reasoning_parser"] == "qwen3"
    assert kw["max_model_len"] == 4096
    assert kw["enable_prefix_caching"] is True
    assert kw["enable_log_requests"] is False
    assert "reasoning_parser" not in engine_kwargs(pool(reasoning_parser=None))


def test_autoscaling_maps_to_serve_options():
    opts = deployment_options(pool(autoscaling={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 24}))
    auto = opts["autoscaling_config"]
    assert (auto["min_replicas"], auto["max_replicas"], auto["target_ongoing_requests"]) == (1, 4, 24)
    assert "num_replicas" not in opts
    assert deployment_options(pool(replicas=3))["num_replicas"] == 3


def test_llm_config_for_cpu_pool():
    config = load_config()
    lc = llm_config_for_pool("thinking", config.pools["thinking"], config)
    assert lc.model_id == "thinking"
    env = lc.runtime_env["env_vars"]
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["RAYLLM_ENABLE_REQUEST_PROMPT_LOGS"] == "0"  # never log prompts
    assert all(env[k] == v for k, v in BASE_ENGINE_ENV.items())
    assert lc.experimental_configs["stream_batching_interval_ms"] == 0
    assert lc.accelerator_config.kind == "cpu"
    # vLLM validates the engine arguments when the engine config is derived.
    assert lc.get_engine_config().engine_kwargs["reasoning_parser"] == "qwen3"


def test_llm_config_for_gpu_pool():
    config = parse_config({"pools": {
        "thinking": {"model": "Qwen/Qwen3-30B-A3B", "accelerator": "gpu", "accelerator_type": "H100",
                     "parallelism": {"tensor_parallel_size": 2, "enable_expert_parallel": True}},
        "fast": {"model": "Qwen/Qwen3-8B", "accelerator": "gpu"},
    }})
    lc = llm_config_for_pool("thinking", config.pools["thinking"], config)
    assert lc.accelerator_type == "H100"
    assert lc.placement_group_config["bundles"] == [{"GPU": 1, "CPU": 1}] * 2
    assert "VLLM_CPU_KVCACHE_SPACE" not in lc.runtime_env["env_vars"]
    assert lc.model_loading_config.model_source == "Qwen/Qwen3-30B-A3B"


def test_unknown_engine_argument_is_rejected_by_vllm_args():
    config = parse_config({"pools": {"thinking": {"model": "tiny-qwen3-moe", "accelerator": "cpu",
                                                  "engine_kwargs": {"max_model_length": 10}},
                                      "fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}}})
    lc = llm_config_for_pool("thinking", config.pools["thinking"], config)
    with pytest.raises(ValueError, match="Unknown engine argument: max_model_length"):
        lc.get_engine_config()
