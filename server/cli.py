"""`qwen-serve`: up | status | plan | check | render."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

import yaml

from server.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, serve_config_file


def _load(path: Optional[str]):
    try:
        return load_config(path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)


def cmd_up(args: argparse.Namespace) -> int:
    from server.launcher import Launcher

    config = _load(args.config)
    if args.port:
        config.server.port = args.port
    if args.host:
        config.server.host = args.host
    if args.address:
        config.server.ray_address = args.address
    return Launcher(config, source=args.config or str(DEFAULT_CONFIG_PATH)).run()


def cmd_status(args: argparse.Namespace) -> int:
    from server.launcher import print_status

    return print_status(args.address, args.url)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    pools = ", ".join(f"{n} ({p.model}, {p.accelerator})" for n, p in config.pools.items())
    print(f"ok: {args.config or DEFAULT_CONFIG_PATH} is valid; pools: {pools}")
    if not args.here:
        return 0
    from server import preflight
    from server.plan_apply import PlanApplyError, resolve_plans

    try:
        done = preflight.run_all(resolve_plans(config), check_bind=True, progress=lambda m: print(f"  {m}"))
    except (PlanApplyError, preflight.PreflightError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"ok: this machine can run it (checked: {', '.join(done)})")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if args.format == "serve":
        doc = serve_config_file(config)
    else:
        doc = config.model_dump(mode="json", exclude_none=True)
    if args.output == "json":
        print(json.dumps(doc, indent=2))
    else:
        print(yaml.safe_dump(doc, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwen-serve", description="Serve Qwen models on Ray Serve + vLLM with a thinking/fast mode router.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start Ray (or join a cluster), deploy, and serve until Ctrl-C")
    up.add_argument("config", nargs="?", help=f"configuration YAML (default: the embedded {DEFAULT_CONFIG_PATH.name})")
    up.add_argument("--address", help="join this Ray cluster instead of starting one ('auto' finds a local one)")
    up.add_argument("--host", help="override server.host")
    up.add_argument("--port", type=int, help="override server.port")
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", help="show each pool's replicas and health")
    status.add_argument("--address", default="auto", help="Ray cluster address (default: auto)")
    status.add_argument("--url", default=None, help="server URL for the health report (default: from the running app)")
    status.set_defaults(func=cmd_status)

    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("config", nargs="?")
    check.add_argument("--here", action="store_true",
                       help="also check that `qwen-serve up` can run it on this machine (port, memory, model, GPUs)")
    check.set_defaults(func=cmd_check)

    render = sub.add_parser("render", help="print the configuration as a Serve config file or plain args")
    render.add_argument("config", nargs="?")
    render.add_argument("--format", choices=["serve", "args"], default="serve")
    render.add_argument("--output", choices=["yaml", "json"], default="yaml")
    render.set_defaults(func=cmd_render)

    from server import planner_cli

    planner_cli.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `qwen-serve plan ... | head`: the reader left; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
