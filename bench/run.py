"""Run every benchmark side by side and print one table of figures and ratios.

    python -m bench.run                 # all scenarios (~55 minutes on 2 cores; scale ~38)
    python -m bench.run queues sqs      # some of them
    python -m bench.run --quick         # one run each, for a smoke test

Absolute times vary between machines and runs; the ratios, measured in the same run on the
same machine, are the figures to compare. Results also go to bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import traceback
from pathlib import Path

SCENARIOS = {
    "queues": "bench.queue_bench",
    "worker": "bench.worker_bench",
    "sqs": "bench.sqs_bench",
    "prefect": "bench.prefect_bench",
    "scale": "bench.scale",
    "scale-cloud": "bench.scale_cloud",
    "cloud-latency": "bench.cloud_latency",
    "resume": "bench.resume",
    "fleet-scale": "bench.fleet_scale",
    "fleet-tail": "bench.fleet_tail",
    "fleet-deadline": "bench.fleet_deadline",
    "fleet-day": "bench.fleet_day",
    "enqueue-history": "bench.enqueue_history",
    "gcs-worker": "bench.gcs_worker",
}


def machine() -> str:
    cpus = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import prefect

    return (
        f"{platform.machine()}, {cpus} cores, {memory:.0f} GiB, Python {platform.python_version()}, "
        f"Prefect {prefect.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "scenarios", nargs="*", help=f"some of: {', '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="one run of each, smaller sizes")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}: choose from {', '.join(SCENARIOS)}")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ["TQDM_DISABLE"] = "1"

    import importlib
    import inspect
    import logging

    logging.getLogger("tqflow").setLevel(logging.WARNING)
    # Results accumulate by scenario: running some scenarios replaces only their rows.
    out = Path(__file__).with_name("results.json")
    results = json.loads(out.read_text()) if out.exists() else {}
    by_scenario: dict = results.get("scenarios", {})
    failed = []
    for name in args.scenarios or SCENARIOS:
        module = importlib.import_module(SCENARIOS[name])
        started = time.perf_counter()
        options: dict = {"runs": 1} if args.quick else {}
        if args.quick and "quick" in inspect.signature(module.run).parameters:
            options["quick"] = True
        try:
            found = module.run(**options)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        seconds = time.perf_counter() - started
        print(f"[{name}: {seconds:.0f} s]", flush=True)
        by_scenario[name] = {
            "rows": found,
            "seconds": round(seconds),
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "quick": args.quick,
        }
        out.write_text(json.dumps({"scenarios": by_scenario}, indent=2, default=str) + "\n")
    rows = [
        {"scenario": name, **row}
        for name in SCENARIOS
        if name in by_scenario
        for row in by_scenario[name]["rows"]
    ]
    print(table(rows))
    print(f"\n{machine()}\nwritten to {out}")
    if failed:
        raise SystemExit(f"scenarios that failed: {', '.join(failed)}")


def table(rows: list[dict]) -> str:
    lines = ["| scenario | measure | value | target | met |", "|---|---|---|---|---|"]
    for row in rows:
        met = {True: "yes", False: "**no**", None: ""}[row.get("met")]
        value = f"{row['value']} {row['unit']}".strip()
        lines.append(
            f"| {row['scenario']} | {row['measure']} | {value} | {row.get('target', '')} | {met} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
