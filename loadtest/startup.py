"""Benchmark: time to ready and resident memory of a `qwen-serve up` stack.

    python -m loadtest.startup [CONFIG] [--runs N] [--json FILE]

Starts `qwen-serve up CONFIG` (default: the embedded two-pool CPU config), waits for its
ready line, then adds up the memory of every process in its tree (Ray's raylet, workers,
Serve replicas, vLLM engine cores and workers): RSS, which counts shared pages once per
process, and PSS, which shares them out fairly. Then it stops the stack with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

READY = "qwen-serve ready: OpenAI API at"
GB = 1e9


def tree_memory(pid: int) -> Dict[str, float]:
    import psutil

    root = psutil.Process(pid)
    procs = [root] + root.children(recursive=True)
    rss = pss = 0
    count = 0
    for p in procs:
        try:
            info = p.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
        count += 1
    return {"processes": count, "rss_gb": rss / GB, "pss_gb": pss / GB}


def one_run(config: Optional[str], timeout_s: float) -> Dict[str, float]:
    cmd = [sys.executable, "-m", "server.cli", "up"] + ([config] if config else [])
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    ready_s = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stderr.write("  | " + line)
            if line.startswith(READY):
                ready_s = time.monotonic() - started
                break
            if time.monotonic() - started > timeout_s:
                break
        if ready_s is None:
            raise SystemExit(f"stack not ready (exit code {proc.poll()})")
        time.sleep(5)  # let lazily started processes settle
        mem = tree_memory(proc.pid)
        return {"ready_s": ready_s, **mem}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.startup", description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="configuration (default: the embedded CPU config)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    runs = [one_run(args.config, args.timeout) for _ in range(args.runs)]
    print(f"\n{'run':>4} {'ready (s)':>10} {'processes':>10} {'RSS (GB)':>9} {'PSS (GB)':>9}")
    for i, r in enumerate(runs, 1):
        print(f"{i:>4} {r['ready_s']:>10.1f} {r['processes']:>10} {r['rss_gb']:>9.2f} {r['pss_gb']:>9.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": args.config or "embedded", "runs": runs}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
