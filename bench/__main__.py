"""The benchmark runner: ``python -m bench [--quick] [--only NAME[,NAME]] [--json PATH]``.

Runs the workloads in one process, interleaving the variants each compares (A B A B ...), and
prints one table (medians, p90, ratios, targets); the same rows go to the JSON file.
Workloads: passthrough, send, decrypt, share (with a matrix-nio client for comparison, unless
--no-nio), media (100 MB encrypted up and down), state (against the stub homeserver), synapse
(pass-through against a real Synapse),
engine (the engine alone vs raw vodozemac, and bench_store's save latency); and, only when
named (``--only NAME``): accounts (15-20 minutes: a fleet of idle accounts on Synapse, with
pantalaimon side by side, and a larger one on the stub), chaos (a few minutes: the crash loop
on Synapse with a matrix-nio and a Rust-crypto peer) and soak (10 minutes: 50 clients through
one proxy, its resources sampled).
``--profile NAME`` runs one workload with the proxy child under cProfile and prints the top
functions.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, Report, machine_info, markdown, table

STUB_WORKLOADS = ("passthrough", "send", "decrypt", "share", "media")
DEFAULT = (*STUB_WORKLOADS, "state", "synapse", "engine")
ALL = (*DEFAULT, "accounts", "chaos", "soak")
MODULES = {"synapse": "synapse_passthrough"}
DEFAULT_JSON = REPO / "bench" / "results" / "latest.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds, under two minutes")
    parser.add_argument("--only", help=f"comma-separated workloads out of {','.join(ALL)}")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where results go")
    parser.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    parser.add_argument("--no-nio", action="store_true", help="skip the matrix-nio comparison")
    parser.add_argument("--profile", metavar="NAME",
                        help="profile the proxy child (cProfile) during workload NAME")
    parser.add_argument("--accounts", help="accounts: fleet sizes on Synapse (default 100,1000)")
    parser.add_argument("--stub-accounts", type=int,
                        help="accounts: fleet size on the stub (default 3000; 0: none)")
    parser.add_argument("--no-pantalaimon", action="store_true",
                        help="skip the pantalaimon comparisons (passthrough, synapse, "
                             "accounts)")
    parser.add_argument("--chaos-messages", type=int, help="chaos: messages sent (1000)")
    parser.add_argument("--chaos-kills", type=int, help="chaos: SIGKILLs of the proxy (20)")
    parser.add_argument("--soak-minutes", type=float, help="soak: minutes of load (10)")
    parser.add_argument("--soak-clients", type=int, help="soak: plain clients (50)")
    args = parser.parse_args(argv)
    chosen = args.only.split(",") if args.only else list(DEFAULT)
    if args.quick and not args.only:
        chosen = [w for w in chosen if w != "synapse"]
    if args.profile:
        chosen = [args.profile]
    unknown = [w for w in chosen if w not in ALL]
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    args.chosen = chosen
    return args


async def run_all(args: argparse.Namespace, report: Report, tmp: Path) -> None:
    from bench.env import stub_env

    stub_ones = [w for w in args.chosen if w in STUB_WORKLOADS]
    if stub_ones:
        async with stub_env(args.quick, tmp, report, profile=args.profile) as env:
            env.record_memory("start")
            env.state["with_nio"] = not args.no_nio
            env.state["with_pantalaimon"] = not args.no_pantalaimon
            for name in stub_ones:
                await _one(name, env)
            report.extra["proxy_memory_kib"] = env.state.get("proxy_memory", {})
            memory = env.proxy.memory_kib() if env.proxy else {}
            from bench.common import Row
            report.add(Row("state", "proxy RSS after workloads " + "+".join(stub_ones),
                           memory.get("VmRSS", 0) / 1024, memory.get("VmHWM", 0) / 1024, "MB",
                           note="p90 column: peak RSS (VmHWM)"))
    for name in args.chosen:
        if name in STUB_WORKLOADS:
            continue
        from bench.env import Env

        env = Env(args.quick, tmp, report)
        if args.accounts:
            env.state["accounts_sizes"] = [int(n) for n in args.accounts.split(",")]
        if args.stub_accounts is not None:
            env.state["stub_accounts"] = args.stub_accounts
        env.state["with_pantalaimon"] = not args.no_pantalaimon
        env.state["args"] = args
        await _one(name, env)


async def _one(name: str, env: object) -> None:
    print(f"[{name}]", flush=True)
    began = time.perf_counter()
    module = importlib.import_module(f"bench.{MODULES.get(name, name)}")
    await module.run(env)
    print(f"  ({time.perf_counter() - began:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    info = machine_info()
    print(f"machine: {info['cpus']} CPUs, {info['cpu_model']}, Python {info['python']}, "
          f"load {info['load_avg_at_start'][0]:.2f}; mode: {'quick' if args.quick else 'full'}")
    report = Report()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="e2eproxy-bench-") as tmp:
        asyncio.run(run_all(args, report, Path(tmp)))
    elapsed = time.perf_counter() - began
    print()
    print(table(report.rows))
    if args.markdown:
        print()
        print(markdown(report.rows))
    print(f"\n{elapsed:.0f} s in all; medians of interleaved rounds (the machine is shared).")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "machine": info, "mode": "quick" if args.quick else "full", "workloads": args.chosen,
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "seconds": elapsed, "rows": [r.as_json() for r in report.rows], **report.extra,
    }, indent=2))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
