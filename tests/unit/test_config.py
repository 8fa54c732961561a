"""Config validation: good and bad YAML, and every error message."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from server.config import (
    DEFAULT_CONFIG_PATH,
    AppConfig,
    ConfigError,
    config_to_args,
    load_config,
    parse_config,
    serve_config_file,
)

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {"pools": {"thinking": {"model": "tiny-qwen3-moe"}, "fast": {"model": "tiny-qwen3-dense"}}}


def _doc(**changes):
    doc = yaml.safe_load(yaml.safe_dump(MINIMAL))
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return doc


def test_embedded_default_is_the_deploy_file_and_valid():
    assert DEFAULT_CONFIG_PATH.resolve() == (ROOT / "deploy" / "local.yaml").resolve()
    config = load_config()
    assert set(config.pools) == {"fast", "thinking"}
    assert config.pools["fast"].model == "tiny-qwen3-dense"
    assert config.pools["thinking"].model == "tiny-qwen3-moe"
    assert all(p.accelerator == "cpu" for p in config.pools.values())
    assert config.router.mode_pools() == {"thinking": "thinking", "fast": "fast"}


def test_minimal_document_gets_defaults():
    config = parse_config(MINIMAL)
    assert config.server.port == 8000
    assert config.pools["fast"].parallelism.tensor_parallel_size == 1
    assert config.router.default_mode == "auto"
    assert config.router.aliases["qwen3-thinking"] == "thinking"


def test_serve_config_wrapper_and_round_trip(tmp_path):
    config = parse_config(MINIMAL)
    wrapped = serve_config_file(config)
    assert wrapped["applications"][0]["import_path"] == "server.app:build_app"
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(wrapped))
    assert load_config(path) == config
    assert parse_config(config_to_args(config)) == config


ERRORS = [
    ("unknown top-level key", {**MINIMAL, "pool": {}}, "pool: unknown field"),
    ("unknown pool key (typo)", _doc(pools__fast__replica=2), "pools.fast.replica: unknown field"),
    ("unknown nested key", _doc(pools__fast__parallelism={"tp": 2}), "pools.fast.parallelism.tp: unknown field"),
    ("missing model", _doc(pools__fast={"accelerator": "cpu"}), "pools.fast.model: Field required"),
    ("no pools", {"pools": {}}, "at least one pool is required"),
    ("negative replicas", _doc(pools__fast__replicas=-1), "pools.fast.replicas: Input should be greater than or equal to 0"),
    ("tp zero", _doc(pools__fast__parallelism={"tensor_parallel_size": 0}), "tensor_parallel_size: Input should be greater than or equal to 1"),
    ("wrong type", _doc(server__port="eighty"), "server.port: Input should be a valid integer"),
    ("bad accelerator", _doc(pools__fast__accelerator="tpu"), "pools.fast.accelerator: Input should be 'cpu' or 'gpu'"),
    ("reserved engine kwarg", _doc(pools__fast__engine_kwargs={"tensor_parallel_size": 2}),
     "engine_kwargs.tensor_parallel_size is set by the pool's `parallelism.tensor_parallel_size` field"),
    ("router names missing pool", _doc(router={"modes": {"thinking": {"pool": "big"}, "fast": {"pool": "fast"}}}),
     "router.modes.thinking.pool names 'big', which is not a pool"),
    ("router missing a mode", _doc(router={"modes": {"fast": {"pool": "fast"}}}), "router.modes needs an entry for ['thinking']"),
    ("alias clashes with pool", _doc(router={"aliases": {"fast": "auto"}}), "router alias 'fast' clashes with the pool"),
    ("bad pool name", {"pools": {"fast pool!": {"model": "x/y"}}}, "may hold only letters, digits"),
    ("autoscaling bounds", _doc(pools__fast__autoscaling={"min_replicas": 3, "max_replicas": 2}), "min_replicas (3) exceeds max_replicas (2)"),
    ("cpu with accelerator_type", _doc(pools__fast__accelerator="cpu", pools__fast__accelerator_type="H100"),
     "accelerator_type applies to GPUs only"),
    ("ep without tp", _doc(pools__fast__parallelism={"enable_expert_parallel": True}), "enable_expert_parallel needs tensor_parallel_size > 1"),
    ("unknown scorer signal", _doc(router={"scorer": {"weights": {"vibes": 1.0}}}), "unknown scorer signals ['vibes']"),
    ("bad default mode", _doc(router={"default_mode": "turbo"}), "router.default_mode: Input should be 'auto', 'thinking' or 'fast'"),
    ("kv cache fractional", _doc(pools__fast__cpu={"kvcache_space_gib": 1.5}), "pools.fast.cpu.kvcache_space_gib: Input should be a valid integer"),
    ("bad plan dtype", _doc(pools__fast__plan={"gpu": "h100", "dtype": "fp4"}), "pools.fast.plan.dtype: Input should be 'bf16', 'fp8' or 'int4'"),
    ("top level not a mapping", ["pools"], "expected a mapping at the top level"),
]


@pytest.mark.parametrize("name,doc,message", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_documents_name_the_field(name, doc, message):
    with pytest.raises(ConfigError) as exc:
        parse_config(doc, "test.yaml")
    text = str(exc.value)
    assert text.startswith("invalid configuration in test.yaml")
    assert message in text


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pools: [unclosed")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_serve_file_must_hold_our_app():
    doc = {"applications": [{"name": "x", "import_path": "other:app", "args": {}}]}
    with pytest.raises(ConfigError, match="exactly one application with import_path 'server.app:build_app'"):
        parse_config(doc)


def test_every_field_has_a_description():
    seen = set()

    def walk(model):
        if model in seen:
            return
        seen.add(model)
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            for arg in getattr(ann, "__args__", ()) + (ann,):
                for inner in getattr(arg, "__args__", ()) + (arg,):
                    if isinstance(inner, type) and hasattr(inner, "model_fields"):
                        walk(inner)

    walk(AppConfig)
    assert len(seen) > 8


def test_yaml_file_with_typo_reports_path(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""
        pools:
          fast:
            model: tiny-qwen3-dense
            engine_kwarg: {max_model_len: 2048}
          thinking:
            model: tiny-qwen3-moe
    """))
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert str(path) in str(exc.value)
    assert "pools.fast.engine_kwarg: unknown field (not allowed here)" in str(exc.value)
