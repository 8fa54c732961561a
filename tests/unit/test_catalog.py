"""The model catalog: published numbers, parameter counts, tiny models, validation."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from server import catalog as catalog_mod
from server.catalog import Catalog, ModelEntry, ParamBreakdown, load_catalog, split_quant_suffix
from server.models import QWEN3_VOCAB_SIZE, TINY_MODELS

CAT = load_catalog()
PUBLISHED = [m for m in CAT.models if m.published_params_b is not None]


def test_catalog_has_the_required_models():
    ids = {m.id for m in CAT.models}
    for size in ("0.6B", "1.7B", "4B", "8B", "14B", "32B", "30B-A3B", "235B-A22B"):
        assert f"Qwen/Qwen3-{size}" in ids
    for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B"):
        assert f"Qwen/Qwen2.5-{size}-Instruct" in ids
    for size in ("1.5B", "7B", "14B", "32B"):
        assert f"Qwen/Qwen2.5-Coder-{size}-Instruct" in ids
    for size in ("1.5B", "7B", "72B"):
        assert f"Qwen/Qwen2.5-Math-{size}-Instruct" in ids
    assert {"Qwen/Qwen2-57B-A14B-Instruct", "tiny-qwen3-dense", "tiny-qwen3-moe"} <= ids
    assert {"l4", "a100-40g", "a100-80g", "h100", "h200", "cpu"} <= set(CAT.gpus)


@pytest.mark.parametrize(
    "model_id, numbers",
    [
        # layers, hidden, q heads, kv heads, head_dim, experts, per token, moe_intermediate, vocab, max pos
        ("Qwen/Qwen3-235B-A22B", (94, 4096, 64, 4, 128, 128, 8, 1536, 151936, 40960)),
        ("Qwen/Qwen3-30B-A3B", (48, 2048, 32, 4, 128, 128, 8, 768, 151936, 40960)),
    ],
)
def test_moe_numbers_from_the_brief(model_id, numbers):
    m = CAT.model(model_id)
    c = m.config
    got = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
           m.moe.num_experts, m.moe.num_experts_per_tok, m.moe.moe_intermediate_size, c.vocab_size,
           c.max_position_embeddings)
    assert got == numbers


def test_qwen2_moe_shared_expert():
    m = CAT.model("Qwen/Qwen2-57B-A14B-Instruct")
    assert (m.moe.num_experts, m.moe.num_experts_per_tok, m.moe.shared_expert_intermediate_size) == (64, 8, 20480)


@pytest.mark.parametrize("m", PUBLISHED, ids=lambda m: m.id)
def test_computed_params_match_the_model_card(m: ModelEntry):
    b = m.param_breakdown()
    assert b.total / 1e9 == pytest.approx(m.published_params_b.total, rel=0.02)
    assert b.active / 1e9 == pytest.approx(m.published_params_b.active, rel=0.02)


def test_hand_counted_qwen3_8b():
    h, v, layers, i = 4096, 151936, 36, 12288
    attn = h * 32 * 128 + 2 * h * 8 * 128 + 32 * 128 * h + 2 * 128  # q, k+v, o, q/k norms
    per_layer = attn + 3 * h * i + 2 * h
    assert CAT.model("Qwen/Qwen3-8B").param_breakdown().total == 2 * v * h + layers * per_layer + h


def test_big_moe_totals():
    b235 = CAT.model("Qwen/Qwen3-235B-A22B").param_breakdown()
    assert 234e9 < b235.total < 236e9 and 21.5e9 < b235.active < 22.5e9
    b30 = CAT.model("Qwen/Qwen3-30B-A3B").param_breakdown()
    assert 30.3e9 < b30.total < 30.7e9 and 3.2e9 < b30.active < 3.45e9


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_entries_equal_server_models(name):
    spec, m = TINY_MODELS[name], CAT.model(name)
    c = m.config
    assert m.architecture == spec.architecture
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.head_dim, c.max_position_embeddings) == (
        spec.hidden_size, spec.intermediate_size, spec.num_hidden_layers, spec.num_attention_heads,
        spec.num_key_value_heads, spec.head_dim, spec.max_position_embeddings)
    assert c.vocab_size == QWEN3_VOCAB_SIZE and c.tie_word_embeddings is True
    if spec.num_experts:
        assert (m.moe.num_experts, m.moe.num_experts_per_tok, m.moe.moe_intermediate_size) == (
            spec.num_experts, spec.num_experts_per_tok, spec.moe_intermediate_size)
    else:
        assert m.moe is None


def test_family_rules():
    for m in CAT.models:
        c = m.config
        if m.family.startswith("qwen3") or m.family == "tiny":
            assert m.thinking and m.reasoning_parser == "qwen3" and m.qk_norm and not m.attention_bias
        else:
            assert not m.thinking and m.reasoning_parser is None and m.attention_bias and not m.qk_norm
            # Qwen2 configs carry no head_dim: it is hidden_size / num_attention_heads.
            assert c.head_dim * c.num_attention_heads == c.hidden_size
        if m.family != "tiny":
            assert m.source == f"https://huggingface.co/{m.id}/blob/main/config.json"


def test_gpu_memory_is_a_little_below_the_datasheet():
    for name, g in CAT.gpus.items():
        if name != "cpu":
            assert 0.9 * g.datasheet_gb < g.memory_gib < g.datasheet_gb


@pytest.mark.parametrize(
    "name, expected",
    [("Qwen/Qwen3-8B", "Qwen/Qwen3-8B"), ("qwen3-8b", "Qwen/Qwen3-8B"), ("Qwen/Qwen3-8B-FP8", "Qwen/Qwen3-8B"),
     ("Qwen/Qwen2.5-72B-Instruct-AWQ", "Qwen/Qwen2.5-72B-Instruct"),
     ("qwen2.5-7b-instruct-gptq-int4", "Qwen/Qwen2.5-7B-Instruct")],
)
def test_name_resolution(name, expected):
    assert CAT.model(name).id == expected


def test_unknown_model_and_gpu():
    with pytest.raises(KeyError, match="unknown model"):
        CAT.model("Qwen/Qwen9-1T")
    with pytest.raises(KeyError, match="unknown GPU kind"):
        CAT.gpu("v100")
    assert split_quant_suffix("Qwen/Qwen3-8B-FP8") == ("Qwen/Qwen3-8B", "fp8", "fp8")
    assert split_quant_suffix("Qwen/Qwen3-8B") == ("Qwen/Qwen3-8B", None, None)


def _raw_entry(**extra):
    raw = CAT.model("Qwen/Qwen3-8B").model_dump()
    raw.update(extra)
    return raw


def test_extra_keys_and_inconsistencies_are_rejected():
    with pytest.raises(ValidationError, match="extra"):
        ModelEntry.model_validate(_raw_entry(num_layers=3))
    bad_cfg = _raw_entry()
    bad_cfg["config"] = {**bad_cfg["config"], "rope_theta": 1e6}
    with pytest.raises(ValidationError, match="extra"):
        ModelEntry.model_validate(bad_cfg)
    with pytest.raises(ValidationError, match="reasoning_parser"):
        ModelEntry.model_validate(_raw_entry(reasoning_parser=None))
    with pytest.raises(ValidationError, match="moe"):
        ModelEntry.model_validate(_raw_entry(architecture="Qwen3MoeForCausalLM"))
    raw = CAT.model_dump()
    raw["models"].append({**raw["models"][0], "id": "Other/Qwen3-0.6B"})
    with pytest.raises(ValidationError, match="used by both"):
        Catalog.model_validate(raw)


def test_every_field_is_described():
    classes = [obj for obj in vars(catalog_mod).values()
               if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == catalog_mod.__name__]
    assert ParamBreakdown in classes and len(classes) >= 7
    for cls in classes:
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name} has no description"
        assert cls.model_config.get("extra") == "forbid", cls.__name__
