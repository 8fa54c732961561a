"""Start one real vLLM CPU engine on a tiny model and print its KV-cache facts as JSON.

Run as a script (vLLM starts its engine core with ``spawn``, hence the ``__main__``
guard); ``test_planner_engine.py`` runs it in a subprocess, one engine at a time:

    VLLM_CPU_KVCACHE_SPACE=1 python tests/integration/planner_engine_probe.py tiny-qwen3-dense \
        '{"max_model_len": 1024, "max_num_seqs": 4}'

The second argument is the engine keyword arguments (JSON), e.g. a plan's
``engine_kwargs``. Printed on one stdout line, prefixed with ``PROBE_JSON=``:

- ``num_gpu_blocks``, ``block_size``, ``kv_cache_memory_bytes``: the client-side
  ``llm.llm_engine.vllm_config.cache_config`` (the engine core reports the number of
  KV blocks it allocated back to the client at start-up);
- ``layers``: one row per attention layer from the worker's
  ``Worker.get_kv_cache_spec()`` (vLLM's ``AttentionSpec``): ``page_size_bytes`` (one
  block of one layer), ``block_size``, ``num_kv_heads``, ``head_size``, ``dtype_bytes``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _worker_kv_spec(worker) -> list:
    """Runs inside each vLLM worker: the KV-cache spec of every attention layer."""
    rows = []
    for name, spec in worker.get_kv_cache_spec().items():
        rows.append(
            {
                "layer": name,
                "kind": type(spec).__name__,
                "page_size_bytes": int(spec.page_size_bytes),
                "block_size": int(spec.block_size),
                "num_kv_heads": int(getattr(spec, "num_kv_heads", -1)),
                "head_size": int(getattr(spec, "head_size", -1)),
                "dtype_bytes": int(spec.dtype.itemsize) if hasattr(spec, "dtype") else -1,
            }
        )
    return rows


def main(argv: list) -> int:
    name = argv[0]
    engine_kwargs = json.loads(argv[1]) if len(argv) > 1 else {"max_model_len": 1024, "max_num_seqs": 4}
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # collective_rpc ships _worker_kv_spec to the worker by pickle; this local test
    # engine talks only to itself, so allowing pickle here is safe.
    os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from server.models import ensure_tiny_model

    model_dir = ensure_tiny_model(name)

    from vllm import LLM

    llm = LLM(model=str(model_dir), dtype="bfloat16", enforce_eager=True, seed=0, **engine_kwargs)
    cache = llm.llm_engine.vllm_config.cache_config
    workers = llm.collective_rpc(_worker_kv_spec)
    out = {
        "model": name,
        "num_gpu_blocks": int(cache.num_gpu_blocks or 0),
        "block_size": int(cache.block_size),
        "kv_cache_memory_bytes": int(cache.kv_cache_memory_bytes or 0),
        "cache_dtype": str(cache.cache_dtype),
        "max_model_len": int(llm.llm_engine.vllm_config.model_config.max_model_len),
        "layers": workers[0],
        "num_workers": len(workers),
    }
    print("PROBE_JSON=" + json.dumps(out), flush=True)
    del llm
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
