#!/usr/bin/env python3
"""Summarize bench/results/*.jsonl as a Markdown table (medians over repeats).

Each gateway or Datasette row is paired with the direct run of the same cell that came right
before it in the same session (its same-run share); repeats are folded into a median with the
range. Invalid runs are left out and counted; profiled runs are left out.

  python3 bench/report.py bench/results/2026-11-28.jsonl [--session 2026-11-28T07:46:42] [--label TEXT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from typing import Any


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def span(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    m = statistics.median(values)
    if len(values) == 1:
        return format(m, fmt)
    return f"{format(m, fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("files", nargs="+")
    p.add_argument("--session", action="append", help="only these sessions (repeatable)")
    p.add_argument("--label", action="append", help="only records whose label contains this")
    p.add_argument(
        "--max-other",
        type=float,
        help="leave out HTTP runs during which other processes used more than this %% of the CPU",
    )
    a = p.parse_args()

    records: list[dict[str, Any]] = []
    for path in a.files:
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    if a.session:
        records = [r for r in records if r.get("session") in a.session]
    if a.label:
        records = [r for r in records if any(lb in (r.get("label") or "") for lb in a.label)]

    # pair each HTTP run with the direct run of its cell that preceded it in its session
    last_direct: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    groups: dict[tuple[str, str, int, str], list[dict[str, Any]]] = defaultdict(list)
    dropped = noisy = 0
    for r in records:
        conns = r["conns"]
        if r["kind"] == "direct":
            key = (
                r["session"],
                r["backend"],
                r["query"],
                -1 if r["backend"] == "sqlite" else conns,
            )
            last_direct[key] = r
            if r.get("valid"):
                groups[(r["backend"], r["query"], conns, "direct: " + r["target"])].append(r)
            continue
        key = (r["session"], r["backend"], r["query"], -1 if r["backend"] == "sqlite" else conns)
        r["_direct"] = last_direct.get(key)
        if not r.get("valid") or r.get("profiled"):
            dropped += 1
            continue
        if a.max_other is not None and (r.get("other_cpu_pct") or 0) > a.max_other:
            noisy += 1
            continue
        groups[(r["backend"], r["query"], conns, r["target"])].append(r)

    order = {"sqlite": 0, "mariadb": 1, "postgresql": 2}
    print(
        "| backend | query | c | target | n | req/s median (min-max) | p50 / p99 ms | share of direct, same run | x Datasette | CPU µs/req server / db / client | other CPU % |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    datasette = {
        (k[0], k[1], k[2]): med([r["rps"] for r in v])
        for k, v in groups.items()
        if k[3] == "datasette"
    }
    for key in sorted(
        groups, key=lambda k: (order.get(k[0], 9), k[1], k[2], not k[3].startswith("direct"), k[3])
    ):
        runs = groups[key]
        backend, query, conns, target = key
        rps = [r["rps"] for r in runs]
        shares = [
            100 * r["rps"] / r["_direct"]["rps"]
            for r in runs
            if r.get("_direct") and r["_direct"].get("rps") and r["_direct"].get("valid")
        ]
        p50 = med([r["p50_ms"] for r in runs if r.get("p50_ms") is not None])
        p99 = med([r["p99_ms"] for r in runs if r.get("p99_ms") is not None])
        cpu = defaultdict(list)
        for r in runs:
            n = r.get("requests")
            for k, v in (r.get("cpu_s") or {}).items():
                if n:
                    cpu[k].append(v * 1e6 / n)
        cpu_s = " / ".join(
            f"{med(cpu[k]):.0f}" if cpu.get(k) else "-" for k in ("server", "db", "client")
        )
        other = med([r["other_cpu_pct"] for r in runs if r.get("other_cpu_pct") is not None])
        ds = datasette.get((backend, query, conns))
        xds = f"{med(rps) / ds:.1f}x" if ds and target.startswith("patchbay") else ""
        lat = f"{p50:.3g} / {p99:.3g}" if p50 is not None and p99 is not None else "-"
        print(
            f"| {backend} | {query} | {conns} | {target} | {len(runs)} | {span(rps, ',.0f')} | {lat} | "
            f"{span(shares, '.1f') + ' %' if shares else ''} | {xds} | {cpu_s} | "
            f"{'' if other is None else f'{other:.0f}'} |"
        )
    if dropped:
        print(f"\n{dropped} invalid or profiled HTTP runs left out.")
    if noisy:
        print(
            f"\n{noisy} HTTP runs left out: other processes used over {a.max_other:g} % of the CPU."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
