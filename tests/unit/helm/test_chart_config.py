"""The chart deploys the same qwen-serve document as the matching deploy/ file.

The rendered serveConfigV2's `args` goes through the project's own config model; it must
equal what `qwen-serve check` / `serve run` load from the deploy/ file, plan-resolved
pools included. (The LLMConfig-level comparison is in test_chart_app.py.)
"""

from __future__ import annotations

import yaml
import pytest

from helm_chart import CHART, EXAMPLES, MATCHING_DEPLOY_FILE, REPO, load_example
from server.config import AppConfig, extract_app_args, load_config, parse_config
from server.plan_apply import apply_plan


def expected_config(example: str) -> AppConfig:
    """The deploy/ file's document, plus what the example's chart values add (API keys)."""
    config = load_config(REPO / MATCHING_DEPLOY_FILE[example])
    api_keys = load_example(example).get("apiKeys") or {}
    if api_keys.get("enabled"):
        path = f"{api_keys.get('mountPath', '/etc/qwen-serve/api-keys').rstrip('/')}/{api_keys.get('secretKey', 'api-keys')}"
        config = config.model_copy(update={"security": config.security.model_copy(update={"api_keys_file": path})})
    return config


def planned(config: AppConfig) -> AppConfig:
    pools = {name: apply_plan(p) if p.plan else p for name, p in config.pools.items()}
    return config.model_copy(update={"pools": pools})


@pytest.mark.parametrize("example", EXAMPLES)
def test_serve_config_args_parse_with_the_config_model(example, rendered_examples):
    config = parse_config(rendered_examples[example].app_args, f"serveConfigV2 of {example}")
    assert config.pools
    for mode, pool in config.router.mode_pools().items():
        assert pool in config.pools, mode


@pytest.mark.parametrize("example", sorted(MATCHING_DEPLOY_FILE))
def test_chart_deploys_the_matching_deploy_file(example, rendered_examples):
    rendered = parse_config(rendered_examples[example].app_args, f"serveConfigV2 of {example}")
    expected = expected_config(example)
    assert rendered == expected
    assert planned(rendered) == planned(expected)


@pytest.mark.parametrize("deploy_file", sorted(set(MATCHING_DEPLOY_FILE.values())))
def test_config_file_from_deploy_file(deploy_file, render_values):
    """helm install --set-file configFile=<deploy file> deploys that document."""
    example = next(e for e, f in sorted(MATCHING_DEPLOY_FILE.items()) if f == deploy_file)
    values = load_example(example)
    values.pop("config", None)
    values["configFile"] = (REPO / deploy_file).read_text()
    rendered = parse_config(render_values(values).app_args, deploy_file)
    assert rendered == expected_config(example)


def test_default_document_is_deploy_local(render_values):
    default_file = yaml.safe_load((CHART / "files" / "default-config.yaml").read_text())
    local = extract_app_args(yaml.safe_load((REPO / "deploy" / "local.yaml").read_text()))
    assert default_file == local, "helm/qwen-serve/files/default-config.yaml must equal deploy/local.yaml's args"
    assert parse_config(render_values().app_args) == load_config(REPO / "deploy" / "local.yaml")


def test_config_without_pools_keeps_default_pools(render_values):
    args = render_values({"config": {"server": {"log_level": "DEBUG"}}}).app_args
    config = parse_config(args)
    assert config.server.log_level == "DEBUG"
    assert set(config.pools) == {"fast", "thinking"}


def test_config_with_pools_is_used_as_written(render_values):
    """No default pool leaks into a document that names its own pools (Helm map merging)."""
    values = {"config": {"pools": {"fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}},
                         "router": {"modes": {"thinking": {"pool": "fast"}, "fast": {"pool": "fast"}}}}}
    args = render_values(values).app_args
    assert args["pools"] == {"fast": {"model": "tiny-qwen3-dense", "accelerator": "cpu"}}
    assert args["router"] == values["config"]["router"]
    assert set(args) == {"pools", "router"}


def test_large_integers_survive_rendering(render_values):
    """Helm's float64 numbers must not reach the document as 4.194304e+06."""
    values = load_example("gpu-30b-values.yaml")
    values["config"]["limits"] = {"max_body_bytes": 4194304, "max_tokens": 1000000}
    r = render_values(values)
    assert '"max_body_bytes": 4194304' in r.rayservice["spec"]["serveConfigV2"]
    assert parse_config(r.app_args).limits.max_tokens == 1000000
