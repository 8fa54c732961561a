"""The sharding planner: hand-worked arithmetic, layout rules, choices, refusals, CLI."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from server import planner as planner_mod
from server import planner_cli, sharding
from server.catalog import load_catalog
from server.planner import PlanError, plan_from_request
from server.sharding import GiB, Layout

CAT = load_catalog()
REPO = Path(__file__).resolve().parents[2]


def m(name):
    return CAT.model(name)


# ---------------------------------------------------------------- KV arithmetic
@pytest.mark.parametrize(
    "model, kv_dtype, tp, expected",
    [
        ("Qwen/Qwen3-8B", "bf16", 1, 2 * 36 * 8 * 128 * 2),  # = 147456
        ("Qwen/Qwen3-8B", "fp8", 1, 2 * 36 * 8 * 128 * 1),
        ("Qwen/Qwen3-8B", "bf16", 2, 2 * 36 * 4 * 128 * 2),
        ("Qwen/Qwen3-235B-A22B", "bf16", 8, 2 * 94 * 1 * 128 * 2),  # 4 KV heads, TP=8: replicated
        ("Qwen/Qwen3-235B-A22B", "bf16", 4, 2 * 94 * 1 * 128 * 2),
        ("Qwen/Qwen2.5-0.5B-Instruct", "bf16", 1, 2 * 24 * 2 * 64 * 2),
        ("tiny-qwen3-dense", "bf16", 1, 2 * 2 * 2 * 64 * 2),
    ],
)
def test_kv_bytes_per_token(model, kv_dtype, tp, expected):
    assert sharding.kv_bytes_per_token(m(model), kv_dtype, tp) == expected


def test_qwen3_8b_kv_is_147456():
    assert sharding.kv_bytes_per_token(m("Qwen/Qwen3-8B"), "bf16") == 147456


def test_kv_heads_replicate_when_tp_exceeds_them():
    moe = m("Qwen/Qwen3-30B-A3B")  # 4 KV heads
    assert [sharding.kv_heads_per_gpu(moe, tp) for tp in (1, 2, 4, 8)] == [4, 2, 1, 1]
    assert sharding.tp_problems(moe, 8, ep=True) == []


@pytest.mark.parametrize(
    "model, tp, ok",
    [
        ("Qwen/Qwen3-235B-A22B", 8, True),
        ("Qwen/Qwen2.5-7B-Instruct", 4, True),
        ("Qwen/Qwen2.5-7B-Instruct", 8, False),  # 28 query heads
        ("Qwen/Qwen2.5-0.5B-Instruct", 4, False),  # 14 query heads
        ("Qwen/Qwen2.5-14B-Instruct", 8, True),  # 40 heads, 8 KV heads
        ("Qwen/Qwen3-32B", 16, True),  # 64 heads; 8 KV heads replicated twice
    ],
)
def test_tp_validity(model, tp, ok):
    assert (sharding.tp_problems(m(model), tp) == []) is ok


def test_pp_partition_follows_vllm():
    assert sharding.pp_partition(94, 4) == [23, 24, 24, 23]
    assert sharding.pp_partition(48, 2) == [24, 24]
    assert sharding.pp_partition(28, 3) == [9, 10, 9]


def test_kv_capacity_counts_whole_blocks():
    assert sharding.kv_capacity_tokens(GiB, 1024, 128) == 1024 * 1024
    assert sharding.kv_capacity_tokens(147456 * 16 * 10 + 5, 147456, 16) == 160
    assert sharding.kv_capacity_tokens(-1, 1024, 16) == 0


# ---------------------------------------------------------------- weights
def test_235b_bf16_needs_about_470_gb():
    total = sharding.total_weight_bytes(m("Qwen/Qwen3-235B-A22B"), "bf16")
    assert 465e9 < total < 475e9


def test_weights_split_by_tp_and_pp():
    e = m("Qwen/Qwen3-8B")
    one = sharding.stage_memory(e, Layout(1, 1), "bf16", "bf16")[0].weight_bytes
    two = sharding.stage_memory(e, Layout(2, 1), "bf16", "bf16")[0].weight_bytes
    assert one == pytest.approx(2 * e.param_breakdown().total, rel=1e-9)
    assert two == pytest.approx(one / 2, rel=0.01)
    stages = sharding.stage_memory(e, Layout(1, 2), "bf16", "bf16")
    assert [s.layers for s in stages] == [18, 18]
    assert sum(s.weight_bytes for s in stages) == pytest.approx(one, rel=1e-6)  # untied: nothing duplicated
    tied = m("Qwen/Qwen3-4B")
    s1 = sharding.stage_memory(tied, Layout(1, 2), "bf16", "bf16")
    whole = sharding.total_weight_bytes(tied, "bf16")
    assert sum(s.weight_bytes for s in s1) - whole == 2 * tied.config.vocab_size * tied.config.hidden_size


def test_moe_experts_ep_vs_tp_same_bytes():
    e = m("Qwen/Qwen3-235B-A22B")
    ep = sharding.stage_memory(e, Layout(8, 1, True), "bf16", "bf16")[0].weight_bytes
    tp = sharding.stage_memory(e, Layout(8, 1, False), "bf16", "bf16")[0].weight_bytes
    assert ep == pytest.approx(tp, rel=1e-6)
    assert 53 * GiB < ep < 56 * GiB


def test_fp8_halves_linear_weights_but_not_embeddings():
    e = m("Qwen/Qwen3-8B")
    bf16, fp8 = (sharding.total_weight_bytes(e, d) for d in ("bf16", "fp8"))
    emb = 2 * 2 * e.config.vocab_size * e.config.hidden_size  # embed + lm_head, bf16 in both
    assert fp8 == pytest.approx(emb + (bf16 - emb) / 2, rel=0.002)


# ---------------------------------------------------------------- plans
def test_235b_bf16_does_not_fit_4_h100_with_numbers():
    with pytest.raises(PlanError) as exc:
        plan_from_request("Qwen/Qwen3-235B-A22B", "h100", 4)
    msg = str(exc.value)
    assert "need 437.9 GiB for weights" in msg and "4 x 71.2 GiB usable" in msg
    assert exc.value.candidates and not any(c.fits for c in exc.value.candidates)


def test_235b_bf16_fits_8_h100_with_tp8():
    p = plan_from_request("Qwen/Qwen3-235B-A22B", "h100", 8, context=32768, concurrency=8)
    assert (p.chosen.tp, p.chosen.pp, p.chosen.ep, p.chosen.replicas) == (8, 1, True, 1)
    assert p.chosen.kv_bytes_per_token == 48128
    assert p.chosen.kv_tokens >= 8 * 32768
    assert any("replicated" in r for r in p.reasons)


def test_235b_fp8_fits_4_h200():
    p = plan_from_request("Qwen/Qwen3-235B-A22B", "h200", 4, dtype="fp8", context=32768, concurrency=32)
    assert p.chosen.tp == 4 and p.chosen.fits and p.kv_dtype == "fp8"
    kw = p.to_pool_fragment()["engine_kwargs"]
    assert kw["quantization"] == "fp8" and kw["kv_cache_dtype"] == "fp8"


def test_30b_a3b_bf16_fits_one_h100_with_room_for_kv():
    p = plan_from_request("Qwen/Qwen3-30B-A3B", "h100", 1, context=32768)
    assert (p.chosen.tp, p.chosen.replicas) == (1, 1)
    assert p.chosen.kv_tokens > 100_000  # about 11 GiB of KV cache


def test_small_model_prefers_replicas_over_tp():
    p = plan_from_request("Qwen/Qwen3-8B", "h100", 8, context=32768, concurrency=64)
    assert (p.chosen.tp, p.chosen.replicas) == (1, 8)
    assert p.to_pool_fragment()["engine_kwargs"]["max_num_seqs"] == 8


def test_unreachable_concurrency_takes_most_capacity():
    p = plan_from_request("Qwen/Qwen3-30B-A3B", "h100", 8, context=40960, concurrency=10_000)
    best = max(c.max_concurrency for c in p.candidates if c.fits)
    assert p.chosen.max_concurrency >= 0.9 * best
    assert any("not reachable" in r for r in p.reasons)


def test_pp_within_node_when_tp_is_limited():
    p = plan_from_request("Qwen/Qwen2.5-7B-Instruct", "l4", 8, context=32768, concurrency=1000)
    assert any(c.tp == 4 and c.pp == 2 for c in p.candidates)
    assert any(r.startswith("TP=8") and "28 query heads" in r for r in p.rejected)


def test_multi_node_pipeline():
    p = plan_from_request("Qwen/Qwen3-235B-A22B", "h100", 4, nodes=2, context=16384, concurrency=4)
    assert (p.chosen.tp, p.chosen.pp, p.chosen.replicas) == (4, 2, 1)
    frag = p.to_pool_fragment()
    assert frag["placement"]["strategy"] == "PACK" and len(frag["placement"]["bundles"]) == 8


def test_kv_too_small_message():
    with pytest.raises(PlanError, match=r"weights fit .* only [\d,]+ tokens of KV cache"):
        plan_from_request("Qwen/Qwen3-32B", "h100", 1, context=40960)


def test_request_errors():
    with pytest.raises(PlanError, match="40,960"):
        plan_from_request("Qwen/Qwen3-8B", "h100", 1, context=131072)
    with pytest.raises(PlanError, match="memory budget"):
        plan_from_request("tiny-qwen3-dense", "cpu")
    with pytest.raises(PlanError, match="bf16"):
        plan_from_request("tiny-qwen3-dense", "cpu", memory_gib=8, dtype="fp8")
    with pytest.raises(PlanError, match="unknown model"):
        plan_from_request("Qwen/Qwen9-1T", "h100")
    with pytest.raises(PlanError, match="unknown GPU kind"):
        plan_from_request("Qwen/Qwen3-8B", "v100")
    with pytest.raises(PlanError, match="contradicts"):
        plan_from_request("Qwen/Qwen3-8B-FP8", "h100", dtype="int4")


def test_quantised_checkpoints():
    p = plan_from_request("Qwen/Qwen3-8B-FP8", "l4", 1, context=8192)
    frag = p.to_pool_fragment()
    assert frag["model"] == "Qwen/Qwen3-8B-FP8" and p.dtype == "fp8"
    assert "quantization" not in frag["engine_kwargs"]  # vLLM reads it from the checkpoint
    awq = plan_from_request("Qwen/Qwen2.5-72B-Instruct-AWQ", "h100", 1, context=8192)
    assert awq.dtype == "int4" and awq.kv_dtype == "bf16" and awq.chosen.tp == 1
    base = plan_from_request("Qwen/Qwen2.5-72B-Instruct", "h100", 1, dtype="int4", context=8192)
    assert any("AWQ or GPTQ" in r for r in base.reasons)


def test_fragment_shape_gpu():
    p = plan_from_request("Qwen/Qwen3-235B-A22B", "h200", 8, dtype="fp8", kv_dtype="fp8",
                          context=32768, concurrency=64)
    frag = p.to_pool_fragment()
    assert list(frag) == ["model", "accelerator", "accelerator_type", "parallelism", "engine_kwargs",
                          "reasoning_parser", "supports_thinking", "replicas", "placement"]
    assert frag["accelerator"] == "gpu" and frag["accelerator_type"] == "H200"
    assert set(frag["parallelism"]) == {"tensor_parallel_size", "pipeline_parallel_size", "enable_expert_parallel"}
    assert frag["engine_kwargs"]["gpu_memory_utilization"] == 0.9
    assert frag["placement"]["bundles"] == [{"GPU": 1, "CPU": 1}] * (p.chosen.tp * p.chosen.pp)
    assert frag["placement"]["strategy"] == "STRICT_PACK"


def test_fragment_for_qwen25_disables_thinking():
    frag = plan_from_request("Qwen/Qwen2.5-7B-Instruct", "l4", 1, context=8192).to_pool_fragment()
    assert frag["reasoning_parser"] is None and frag["supports_thinking"] is False
    assert frag["accelerator_type"] == "L4" and "kv_cache_dtype" not in frag["engine_kwargs"]


def test_fragment_shape_cpu():
    p = plan_from_request("tiny-qwen3-moe", "cpu", 1, memory_gib=6, context=1024, concurrency=4)
    frag = p.to_pool_fragment()
    assert frag["accelerator"] == "cpu" and "accelerator_type" not in frag
    assert "gpu_memory_utilization" not in frag["engine_kwargs"]
    space = frag["cpu"]["kvcache_space_gib"]
    assert isinstance(space, int) and space >= 1
    assert p.chosen.kv_tokens == space * GiB // sharding.kv_bytes_per_token(p.entry, "bf16")
    assert frag["placement"]["bundles"] == [{"CPU": 1}]


@pytest.mark.parametrize("frag_args", [
    ("Qwen/Qwen3-235B-A22B", "h200", 8, "fp8"), ("Qwen/Qwen2.5-7B-Instruct", "l4", 2, "bf16"),
])
def test_fragment_is_a_valid_pool(frag_args):
    config = pytest.importorskip("server.config")
    model, gpu, gpus, dtype = frag_args
    frag = plan_from_request(model, gpu, gpus, dtype=dtype, context=8192, concurrency=16).to_pool_fragment()
    config.PoolConfig.model_validate(frag)


@pytest.mark.parametrize("entry", CAT.models, ids=lambda e: e.id)
def test_every_catalog_model_plans_on_8_h200(entry):
    p = plan_from_request(entry.id, "h200", 8, context=min(8192, entry.config.max_position_embeddings))
    assert p.chosen.fits and p.chosen.kv_tokens >= p.context


def test_every_output_field_is_described():
    for cls in (planner_mod.Candidate, planner_mod.Plan):
        assert issubclass(cls, BaseModel) and cls.model_config.get("extra") == "forbid"
        for name, field in cls.model_fields.items():
            assert field.description, f"{cls.__name__}.{name}"


# ---------------------------------------------------------------- CLI and docs
def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    parser = planner_cli.argparse.ArgumentParser()
    planner_cli._add_arguments(parser)
    rc = planner_cli.run(parser.parse_args(argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_cli_prints_table_and_yaml(capsys):
    rc = planner_cli.main(["Qwen/Qwen3-235B-A22B", "--gpu", "h200", "--gpus", "8", "--dtype", "fp8",
                           "--kv-dtype", "fp8", "--context", "32768", "--concurrency", "64", "--all"])
    out = capsys.readouterr().out
    assert rc == 0
    table, _, rest = out.partition("\n\n")
    rows = [line for line in table.splitlines() if line.startswith("*")]
    assert len(rows) == 1 and "TP" in table and "KV tokens/rep" in table
    frag = yaml.safe_load(rest)
    assert frag["model"] == "Qwen/Qwen3-235B-A22B" and frag["parallelism"]["enable_expert_parallel"] is True
    assert frag["engine_kwargs"]["max_model_len"] == 32768


def test_cli_plan_word_and_refusal(capsys):
    rc = planner_cli.main(["plan", "Qwen/Qwen3-235B-A22B", "--gpu", "h100", "--gpus", "4"])
    cap = capsys.readouterr()
    assert rc == 1 and "437.9 GiB" in cap.err and "4 x 71.2 GiB" in cap.err
    assert "no: weights" in cap.out


def test_cli_list_and_usage():
    rc, out, _ = _run(["--list"])
    assert rc == 0 and "Qwen/Qwen3-235B-A22B" in out and "h200 (139.8 GiB)" in out
    rc, _, err = _run([])
    assert rc == 2 and "give a model" in err
    rc, out, _ = _run(["qwen2.5-7b-instruct", "--gpu", "l4", "--gpus", "8", "--all"])
    assert rc == 0 and "invalid TP=8" in out


def test_add_parser_registers_plan():
    parser = planner_cli.argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    planner_cli.add_parser(sub)
    args = parser.parse_args(["plan", "qwen3-8b", "--gpu", "l4"])
    assert args.func is planner_cli.run and args.model == "qwen3-8b" and args.gpus == 1


def test_planner_doc_table_is_current():
    doc = REPO / "deploy" / "PLANNER.md"
    assert not planner_cli.write_doc(str(doc), check=True), (
        "deploy/PLANNER.md is stale: run python -m server.planner_cli --write-doc deploy/PLANNER.md")


def test_planner_is_pure():
    import ast

    for mod in ("planner.py", "sharding.py", "catalog.py", "plan_explain.py"):
        tree = ast.parse((REPO / "server" / mod).read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not names & {"fastapi", "ray", "vllm", "torch"}, mod
