"""The planner's KV arithmetic against what the real vLLM CPU engine allocates.

For each tiny test model one engine is started in a subprocess
(``planner_engine_probe.py``; one engine at a time, ~1 minute each) with a 1 GiB KV
cache (``VLLM_CPU_KVCACHE_SPACE=1``). The engine's own numbers are compared with the
planner's:

- per layer, vLLM's ``AttentionSpec.page_size_bytes`` (one block of one layer, from
  ``Worker.get_kv_cache_spec()``) == block_size x the planner's per-layer bytes per token;
- summed over layers and divided by the block size == ``sharding.kv_bytes_per_token``;
- ``vllm_config.cache_config.num_gpu_blocks`` x ``block_size`` == the planner's KV
  token capacity for the same space (for the dense model, the engine is started from
  the planner's own CPU pool fragment: its engine_kwargs and kvcache_space_gib).
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
from pathlib import Path

import pytest

from server import sharding
from server.catalog import load_catalog
from server.models import ensure_tiny_model
from server.planner import plan_from_request
from stackprobe import run_probe

PROBE = Path(__file__).with_name("planner_engine_probe.py")
CAT = load_catalog()


def _probe(name: str, engine_kwargs: dict, kv_space_gib: int) -> dict:
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE=str(kv_space_gib), VLLM_ALLOW_INSECURE_SERIALIZATION="1")
    return run_probe(PROBE, name, json.dumps(engine_kwargs), env=env)


def _check_layers(name: str, facts: dict) -> int:
    entry = CAT.model(name)
    cpu = CAT.gpu("cpu")
    per_layer = sharding.kv_bytes_per_token(entry, "bf16", tp=1, layers=1)
    assert facts["block_size"] == cpu.block_size == 128
    assert len(facts["layers"]) == entry.config.num_hidden_layers
    for layer in facts["layers"]:
        assert layer["kind"] == "FullAttentionSpec"
        assert layer["num_kv_heads"] == sharding.kv_heads_per_gpu(entry, 1)
        assert layer["head_size"] == entry.config.head_dim and layer["dtype_bytes"] == 2
        assert layer["page_size_bytes"] == layer["block_size"] * per_layer
    engine_per_token = sum(layer["page_size_bytes"] for layer in facts["layers"]) // facts["block_size"]
    assert engine_per_token == sharding.kv_bytes_per_token(entry, "bf16")
    return engine_per_token


@pytest.mark.engine
@pytest.mark.timeout(420)
def test_dense_engine_started_from_the_plan_matches_it():
    name = "tiny-qwen3-dense"
    plan = plan_from_request(name, "cpu", 1, memory_gib=4.5, context=1024, concurrency=4)
    frag = plan.to_pool_fragment()
    space = frag["cpu"]["kvcache_space_gib"]
    assert space == 1  # keep the engine small: the test machine's memory is shared
    facts = _probe(name, frag["engine_kwargs"], space)
    assert facts["kv_cache_memory_bytes"] == space * sharding.GiB
    assert facts["max_model_len"] == plan.context
    _check_layers(name, facts)
    assert facts["num_gpu_blocks"] * facts["block_size"] == plan.chosen.kv_tokens == 1024 * 1024


@pytest.mark.engine
@pytest.mark.timeout(420)
def test_moe_engine_kv_matches_planner():
    name = "tiny-qwen3-moe"
    facts = _probe(name, {"max_model_len": 1024, "max_num_seqs": 4}, 1)
    per_token = _check_layers(name, facts)
    expected = sharding.kv_capacity_tokens(sharding.GiB, per_token, CAT.gpu("cpu").block_size)
    assert facts["num_gpu_blocks"] * facts["block_size"] == expected


def _safetensors_params(directory: Path) -> int:
    total = 0
    for path in glob.glob(str(directory / "*.safetensors")):
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


@pytest.mark.parametrize("name", ["tiny-qwen3-dense", "tiny-qwen3-moe"])
def test_param_count_equals_the_built_checkpoint(name):
    """The catalog's parameter counting is exact on the checkpoints transformers writes."""
    assert _safetensors_params(ensure_tiny_model(name)) == CAT.model(name).param_breakdown().total
