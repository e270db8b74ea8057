#!/usr/bin/env python3
"""Push out: messages per second to an FCM emulator, Patchbay against the other Python clients.

For each client (see ``push_client.py``) and protocol, in the same invocation, one after the
other, each in a process of its own and each against a *fresh* emulator process
(``push_emulator.py``: ``patchbay emulate fcm --latency 0.02 --write-service-account`` plus a
read-only count route):

1. wait until the other benchmark (a Python process matching ``pgrep -f bench/hooks.py``; a
   ``flock`` queued behind this run is not one) is not running, then for a quiet second
   (``run.py``'s ``settle``);
2. start the emulator on a free port (it writes the service account whose ``token_uri`` is its
   own ``/token``);
3. run ``push_client.py CLIENT --http 2|1 --tokens FILE``: it streams the token file, sends one
   notification per token and prints its figures (messages per second over the measured part,
   RSS before and peak during it, its CPU);
4. read the emulator's ledger (``GET /__bench/stats``): a run is *valid* only if the client
   counted every token as sent, the ledger holds exactly one message per token, the sorted
   targets hash to the token file's hash, and every send arrived over the protocol asked for;
5. stop the emulator; append one JSON line (commands, versions, figures, CPU of the client, of
   the emulator and of every other process during the run) to
   ``bench/results/push-<date>.jsonl``.

Afterwards the memory runs (``--memory-clients`` with ``--memory-tokens``, 100,000 tokens by
default) show whether a client's peak RSS grows with the number of tokens streamed.

A table is printed at the end: msg/s, x firebase-admin ``send_each_async`` and % of the
ceiling (the faster bare client of the same protocol and repeat: httpx for h2c, the better of
httpx and aiohttp for HTTP/1.1), CPU per message, peak RSS, other CPU.
Loopback only; every step has a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from run import (
    BENCH,
    HOST,
    RESULTS,
    ROOT,
    CpuWindow,
    Server,
    append_record,
    calibrate,
    clean_env,
    free_port,
    http_get,
    interrupted,
    log,
    print_rows,
    py_spy,
    settle,
    source_id,
    summarize_profile,
    wait_bounded,
)

# (client, HTTP version): h2c first, then the HTTP/1.1 table.
DEFAULT_RUNS = (
    "bare:2,patchbay:2,patchbay-blocking:2,admin-async:2,"
    "bare:1,bare-aiohttp:1,patchbay:1,patchbay-blocking:1,admin-async:1,admin-sync:1,"
    "pyfcm-threads:1,pyfcm-async:1"
)
REFERENCE = "admin-async"  # the "x firebase-admin" denominator (its concurrent send)
# The ceiling of a protocol: the fastest of the clients that only post (bare-aiohttp speaks
# HTTP/1.1 only), so that "% of the ceiling" is against the best a Python client did here.
CEILINGS = ("bare", "bare-aiohttp")
TOKEN_SEED = 20261128
DATA = BENCH / "data"


def token_file(n: int) -> Path:
    """``bench/data/push-tokens-N.txt``: N deterministic FCM-shaped registration tokens.

    163 characters each (22, ``:APA91b``, 134), like real ones; the same seed for every N, so
    the 10,000 file is the first 10,000 lines of the 100,000 one.
    """
    path = DATA / f"push-tokens-{n}.txt"
    if path.exists() and sum(1 for _ in path.open()) == n:
        return path
    DATA.mkdir(exist_ok=True)
    rng = random.Random(TOKEN_SEED)
    alphabet = string.ascii_letters + string.digits + "-_"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for _ in range(n):
            head = "".join(rng.choices(alphabet, k=22))
            tail = "".join(rng.choices(alphabet, k=134))
            f.write(f"{head}:APA91b{tail}\n")
    tmp.replace(path)
    return path


def targets_hash(path: Path) -> tuple[str, int]:
    """sha256 of the file's distinct tokens, sorted, one a line: what the emulator reports."""
    tokens = sorted({line.strip() for line in path.open() if line.strip()})
    digest = hashlib.sha256()
    for token in tokens:
        digest.update(token.encode() + b"\n")
    return digest.hexdigest(), len(tokens)


def push_source() -> str:
    """sha256 (16 hex) of what this benchmark runs of src/: the sender, the emulator, settings."""
    digest = hashlib.sha256()
    src = ROOT / "src" / "patchbay"
    files = [*sorted((src / "push").glob("*.py")), *sorted((src / "emulators").glob("*.py"))]
    for path in [*files, src / "settings.py"]:
        digest.update(str(path.relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def running(pattern: str) -> list[str]:
    """Pids of Python processes (not this one) whose command line matches ``pattern``.

    Only interpreters count: a ``flock /tmp/patchbay-bench.lock ... bench/hooks.py`` queued behind
    this run (or ``timeout``/``sh`` around it) has the pattern in its command line but runs
    nothing until we release the lock, and waiting for it would wait for ourselves.
    """
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
    pids = []
    for pid in set(found.split()) - {str(os.getpid())}:
        with contextlib.suppress(OSError):
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if "python" in Path(argv0.decode(errors="replace")).name:
                pids.append(pid)
    return sorted(pids)


def wait_for_others(pattern: str, max_wait: float) -> float:
    """Poll until no process matches ``pattern`` (the other benchmark); seconds waited."""
    started = time.monotonic()
    announced = False
    while time.monotonic() - started < max_wait:
        found = running(pattern)
        if not found:
            return round(time.monotonic() - started, 1)
        if not announced:
            log(f"waiting for {pattern!r} to finish (pids {' '.join(found)})")
            announced = True
        time.sleep(5)
    log(f"{pattern!r} still running after {max_wait:g} s: measuring anyway (see other_cpu_pct)")
    return round(time.monotonic() - started, 1)


def others_running(pattern: str) -> bool:
    return bool(running(pattern))


def emulator_stats(port: int) -> dict[str, Any]:
    status, body, _ = http_get(port, "/__bench/stats", timeout=60)
    if status != 200:
        raise RuntimeError(f"/__bench/stats answered {status}")
    return json.loads(body)


def start_emulator(workdir: Path, a: argparse.Namespace) -> tuple[Server, list[str]]:
    port = free_port()
    sa = workdir / "sa.json"
    cmd = [sys.executable, str(BENCH / "push_emulator.py"), "-h", HOST, "-p", str(port)]
    cmd += ["--latency", f"{a.latency:g}", "--write-service-account", str(sa)]
    server = Server(cmd, port, clean_env(), workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"emulator exited: {server.log_text()[-2000:]}")
        try:
            emulator_stats(port)
            if sa.exists():
                return server, cmd
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("emulator not ready within 30 s")


def last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def shown(cmd: list[str]) -> str:
    out = []
    for c in cmd:
        if c.startswith(str(ROOT)):
            c = os.path.relpath(c, ROOT)
        elif c.startswith(tempfile.gettempdir()):
            c = "$TMP/" + Path(c).name
        out.append(c)
    return " ".join(out)


def measure(client: str, http: int, n: int, a: argparse.Namespace) -> dict[str, Any]:
    tokens = token_file(n)
    expected_hash, distinct = targets_hash(tokens)
    rec: dict[str, Any] = {
        "kind": "push",
        "client": client,
        "http": http,
        "tokens": n,
        "concurrency": a.concurrency,
        "latency_s": a.latency,
        "token_file": os.path.relpath(tokens, ROOT),
        "tokens_sha256": expected_hash,
    }
    invalid: list[str] = []
    rec["waited_for_others_s"] = wait_for_others(a.wait_for, a.max_wait)
    rec["busy_before_pct"] = settle(a.settle, a.settle_below)
    workdir = Path(tempfile.mkdtemp(prefix=f"patchbay-push-{client}-"))
    server, emu_cmd = start_emulator(workdir, a)
    rec["emulator_cmd"] = shown(emu_cmd)
    cmd = [sys.executable, str(BENCH / "push_client.py"), client, "--http", str(http)]
    cmd += ["--url", f"http://{HOST}:{server.port}", "--sa", str(workdir / "sa.json")]
    cmd += ["--tokens", str(tokens), "--concurrency", str(a.concurrency)]
    profile_path: Path | None = None
    if a.profile:
        exe = py_spy()
        if exe is None:
            rec["profile_error"] = "py-spy not found"
        else:
            stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
            profile_path = RESULTS / f"profile-push-{client}-h{http}-{n}-{stamp}.txt"
            spy = [exe, "record", "-r", str(a.profile_rate), "--format", "raw"]
            cmd = [*spy, "-o", str(profile_path), "--", *cmd]
    rec["client_cmd"] = shown(cmd)
    env = clean_env()
    if a.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([a.pythonpath, env.get("PYTHONPATH", "")]).rstrip(":")
        rec["pythonpath"] = a.pythonpath
    try:
        window = CpuWindow({"emulator": server.pids})
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=ROOT)
            _, usage = wait_bounded(proc, a.time_limit)
            client_cpu = usage.ru_utime + usage.ru_stime
            cpu = window.finish({"client": client_cpu})
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        rec["other_helper_running_after"] = others_running(a.wait_for)
        rec["client_exit"] = proc.returncode
        rec["client_maxrss_kib"] = usage.ru_maxrss
        rec.update({k: v for k, v in cpu.items()})
        result = last_json(stdout)
        if proc.returncode != 0 or result is None:
            invalid.append(f"client exit {proc.returncode}: {stderr[-600:]}")
            result = {}
        rec["result"] = result
        for key in ("msg_per_s", "ok", "failed", "elapsed_s", "cpu_us_per_msg"):
            rec[key] = result.get(key)
        rec["rss_base_kib"] = result.get("rss_base_kib")
        rec["rss_peak_kib"] = result.get("rss_peak_kib")
        rec["peak_minus_base_kib"] = result.get("peak_minus_base_kib")
        stats = emulator_stats(server.port)
        rec["emulator"] = stats
        rec["emulator_cpu_us_per_msg"] = round(1e6 * cpu["cpu_s"]["emulator"] / n, 1)
        if stderr.strip():
            rec["client_stderr_tail"] = stderr[-400:]
    finally:
        server.stop()
        rec["emulator_log_tail"] = server.log_text()[-400:]
    if result and (result.get("ok") != n or result.get("failed")):
        invalid.append(f"client: {result.get('ok')} ok, {result.get('failed')} failed")
        if result.get("errors"):
            invalid.append(f"errors: {json.dumps(result['errors'])[:300]}")
    if stats["ledger"] != n or stats["distinct"] != distinct:
        invalid.append(f"ledger {stats['ledger']} messages to {stats['distinct']} targets")
    if stats["targets_sha256"] != expected_hash:
        invalid.append("the ledger's targets are not the token file's")
    want = f"send HTTP/{'2' if http == 2 else '1.1'}"
    sends = {k: v for k, v in stats.get("http_versions", {}).items() if k.startswith("send ")}
    if set(sends) != {want}:
        invalid.append(f"sends arrived as {sends}, wanted only {want}")
    rec["valid"] = not invalid
    rec["invalid"] = invalid
    if profile_path is not None and profile_path.exists():
        rec["profile_file"] = os.path.relpath(profile_path, ROOT)
        rec["profiled"] = True
    return rec


# Stacks py-spy counts as active although the thread only waits for work (an idle
# ThreadPoolExecutor worker blocked in SimpleQueue.get): left out of the summaries.
IDLE_LEAVES = ("_worker (concurrent/futures/thread.py:81)",)


def summarize_busy(path: Path) -> str:
    """``run.py``'s summary of a raw py-spy profile, without the idle stacks (kept in the file)."""
    kept, idle = [], 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack.endswith(IDLE_LEAVES) and count.isdigit():
            idle += int(count)
            continue
        kept.append(line)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as tmp:
        tmp.write("\n".join(kept) + "\n")
    try:
        summary = summarize_profile(Path(tmp.name)).replace(tmp.name, str(path))
    finally:
        os.unlink(tmp.name)
    head = f"({idle} samples of idle thread-pool workers left out)\n"
    return head + summary


def fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def same_run(records: list[dict[str, Any]], r: dict[str, Any], client: str) -> dict | None:
    """The record of ``client`` with r's protocol, token count and repeat (None if missing).

    A run measured again because it was noisy: the clean one.
    """
    key = (client, r["http"], r["tokens"], r["repeat"])
    found = [
        x
        for x in records
        if (x["client"], x["http"], x["tokens"], x["repeat"]) == key and x.get("msg_per_s")
    ]
    clean = [x for x in found if not x.get("noisy")]
    return (clean or found or [None])[0]


def ceiling(records: list[dict[str, Any]], r: dict[str, Any]) -> dict | None:
    """The fastest bare client's record with r's protocol, token count and repeat."""
    found = [c for c in (same_run(records, r, name) for name in CEILINGS) if c]
    return max(found, key=lambda c: c["msg_per_s"], default=None)


def print_table(records: list[dict[str, Any]]) -> None:
    head = (
        "client",
        "proto",
        "tokens",
        "rep",
        "msg/s",
        "x admin-async",
        "% of ceiling",
        "client CPU us/msg",
        "emu CPU us/msg",
        "RSS base/peak MiB",
        "peak-base MiB",
        "other CPU %",
        "valid",
    )
    rows = []
    for r in records:
        ref = same_run(records, r, REFERENCE)
        bare = ceiling(records, r)
        rate = r.get("msg_per_s")
        x_ref = f"{rate / ref['msg_per_s']:.2f}x" if ref and rate else "-"
        of_bare = f"{100 * rate / bare['msg_per_s']:.0f} %" if bare and rate else "-"
        base, peak = r.get("rss_base_kib"), r.get("rss_peak_kib")
        rows.append(
            (
                r["client"]
                + (" [profiled]" if r.get("profiled") else "")
                + (" [noisy]" if r.get("noisy") else ""),
                "h2c" if r["http"] == 2 else "HTTP/1.1",
                f"{r['tokens']:,}",
                str(r["repeat"]),
                fmt(rate),
                x_ref,
                of_bare,
                fmt(r.get("cpu_us_per_msg")),
                fmt(r.get("emulator_cpu_us_per_msg")),
                f"{fmt(base and base / 1024, '.0f')}/{fmt(peak and peak / 1024, '.0f')}",
                fmt(r.get("peak_minus_base_kib") and r["peak_minus_base_kib"] / 1024, ".1f"),
                fmt(r.get("other_cpu_pct"), ".1f"),
                "yes" if r.get("valid") else "NO",
            )
        )
    print_rows(head, rows)
    medians(records)
    bad = [r for r in records if not r.get("valid")]
    if bad:
        print("\nInvalid runs:")
        for r in bad:
            print(f"  {r['client']} h{r['http']} {r['tokens']}: {'; '.join(r['invalid'])[:500]}")


def medians(records: list[dict[str, Any]]) -> None:
    """Medians over repeats of valid, unprofiled, quiet runs; ratios: medians of same-run ones."""
    cells: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("valid") and not r.get("profiled") and not r.get("noisy") and r.get("msg_per_s"):
            cells.setdefault((r["client"], r["http"], r["tokens"]), []).append(r)
    if not cells:
        return
    head = ("client", "proto", "tokens", "runs", "msg/s median", "x admin-async", "% of ceiling")
    rows = []
    for (client, http, n), rs in cells.items():
        x_ref, of_bare = [], []
        for r in rs:
            ref = same_run(records, r, REFERENCE)
            bare = ceiling(records, r)
            if ref:
                x_ref.append(r["msg_per_s"] / ref["msg_per_s"])
            if bare:
                of_bare.append(100 * r["msg_per_s"] / bare["msg_per_s"])
        rows.append(
            (
                client,
                "h2c" if http == 2 else "HTTP/1.1",
                f"{n:,}",
                str(len(rs)),
                fmt(statistics.median(r["msg_per_s"] for r in rs)),
                f"{statistics.median(x_ref):.2f}x" if x_ref else "-",
                f"{statistics.median(of_bare):.0f} %" if of_bare else "-",
            )
        )
    print("\nMedians over repeats (valid, unprofiled runs, other CPU under --max-other):")
    print_rows(head, rows)


def verdict(records: list[dict[str, Any]], tokens: int, memory_tokens: int) -> None:
    """The issue's targets per protocol: >= 3x admin-async, >= 80 % of the ceiling; memory.

    Also Patchbay on its faster protocol against firebase-admin's async send on *its* faster one.
    """
    ok = [r for r in records if r.get("valid") and not r.get("profiled") and not r.get("noisy")]

    def median_of(client: str, http: int, n: int, key: str) -> float | None:
        values = [
            r[key]
            for r in ok
            if (r["client"], r["http"], r["tokens"]) == (client, http, n) and r.get(key)
        ]
        return statistics.median(values) if values else None

    def best(client: str) -> tuple[float, int] | None:
        rates = [(m, h) for h in (2, 1) if (m := median_of(client, h, tokens, "msg_per_s"))]
        return max(rates, default=None)

    def proto(http: int) -> str:
        return "h2c" if http == 2 else "HTTP/1.1"

    print("\nTargets (medians of quiet valid runs):")
    for client in ("patchbay", "patchbay-blocking"):
        for http in (2, 1):
            mine = median_of(client, http, tokens, "msg_per_s")
            ref = median_of(REFERENCE, http, tokens, "msg_per_s")
            ceilings = [(m, c) for c in CEILINGS if (m := median_of(c, http, tokens, "msg_per_s"))]
            if not (mine and ref and ceilings):
                continue
            bare, bare_client = max(ceilings)
            x, share = mine / ref, 100 * mine / bare
            print(
                f"  {client} {proto(http)}: {mine:,.0f} msg/s = {x:.2f}x {REFERENCE} (target 3x: "
                f"{'met' if x >= 3 else 'MISSED'}), {share:.0f} % of {bare_client} (target 80 %: "
                f"{'met' if share >= 80 else 'MISSED'})"
            )
        mine_best, ref_best = best(client), best(REFERENCE)
        if mine_best and ref_best:
            print(
                f"  {client} on its best protocol ({proto(mine_best[1])}, {mine_best[0]:,.0f}"
                f" msg/s) = {mine_best[0] / ref_best[0]:.2f}x {REFERENCE} on its best"
                f" ({proto(ref_best[1])}, {ref_best[0]:,.0f} msg/s)"
            )
    for r in sorted({(r["client"], r["http"]) for r in ok if r["tokens"] == memory_tokens}):
        small = median_of(*r, tokens, "peak_minus_base_kib")
        large = median_of(*r, memory_tokens, "peak_minus_base_kib")
        peak_small = median_of(*r, tokens, "rss_peak_kib")
        peak_large = median_of(*r, memory_tokens, "rss_peak_kib")
        if small is None or large is None or not peak_small or not peak_large:
            continue
        print(
            f"  memory {r[0]} h{r[1]}: peak - base {small / 1024:.1f} MiB at {tokens:,} tokens, "
            f"{large / 1024:.1f} MiB at {memory_tokens:,}; peak RSS {peak_small / 1024:.1f} -> "
            f"{peak_large / 1024:.1f} MiB"
        )


def parse_runs(spec: str) -> list[tuple[str, int]]:
    runs = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        client, _, http = item.partition(":")
        runs.append((client, int(http or 2)))
    return runs


def versions() -> dict[str, Any]:
    code = (
        "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
        "('patchbay','firebase-admin','pyfcm','httpx','httpcore','h2','hypercorn','requests',"
        "'urllib3','aiohttp','google-auth','anyio','orjson')}))"
    )
    out: dict[str, Any] = {"python": sys.version.split()[0]}
    with contextlib.suppress(ValueError, OSError, subprocess.SubprocessError):
        probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out.update(json.loads(probe.stdout))
    probe = subprocess.run(
        [sys.executable, "-c", "import sniffio"], capture_output=True, timeout=30
    )
    out["sniffio_installed"] = probe.returncode == 0
    exe = py_spy()
    if exe:
        out["py-spy"] = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=30
        ).stdout.strip()
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--runs", default=DEFAULT_RUNS, help="comma list of CLIENT:HTTP (2 or 1)")
    p.add_argument("--tokens", type=int, default=10_000, help="tokens per run (10000)")
    p.add_argument("--concurrency", type=int, default=100, help="requests in flight (100)")
    p.add_argument("--latency", type=float, default=0.02, help="emulator latency, s (0.02)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--memory-clients",
        default="patchbay:1,patchbay-blocking:1,bare-aiohttp:1,patchbay:2",
        help="CLIENT:HTTP list run again with --memory-tokens ('' for none)",
    )
    p.add_argument("--memory-tokens", type=int, default=100_000)
    p.add_argument("--profile", action="store_true", help="py-spy every client (marked)")
    p.add_argument("--profile-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument(
        "--pythonpath", help="prepended to the clients' PYTHONPATH (e.g. a dir with sniffio)"
    )
    p.add_argument("--wait-for", default="bench/hooks.py", help="pgrep -f pattern to wait out")
    p.add_argument("--max-wait", type=float, default=3600.0, help="seconds to wait for it")
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--settle-below", type=float, default=15.0)
    p.add_argument(
        "--max-other",
        type=float,
        default=10.0,
        help="a run in which other processes used more %% of the CPU is noisy (10)",
    )
    p.add_argument("--retry-noisy", type=int, default=2, help="measure a noisy run again (2)")
    p.add_argument("--time-limit", type=float, default=900.0, help="seconds per client run")
    p.add_argument("--label", default="")
    p.add_argument("--out", help="JSONL file (default bench/results/push-<date>.jsonl)")
    a = p.parse_args()
    signal.signal(signal.SIGTERM, interrupted)
    runs = parse_runs(a.runs)
    memory = parse_runs(a.memory_clients)
    RESULTS.mkdir(exist_ok=True)
    out_path = Path(a.out) if a.out else RESULTS / f"push-{dt.date.today().isoformat()}.jsonl"
    session = {
        "session": dt.datetime.now().isoformat(timespec="seconds"),
        "label": a.label,
        **source_id(),
        "calibration_unquote_us": calibrate(),
    }
    info = versions()
    log(f"versions: {json.dumps(info)}")
    log(f"source: {session['git']} dirty={session['src_dirty']} sha={session['src_sha256']}")
    records: list[dict[str, Any]] = []

    def keep(rec: dict[str, Any]) -> None:
        rec = {**rec, "push_src_sha256": push_source()}
        rec = append_record(out_path, records, session, info, rec)
        line = (
            f"{rec['client']} h{rec['http']} {rec['tokens']:,}: {fmt(rec.get('msg_per_s'))} msg/s,"
            f" client {fmt(rec.get('cpu_us_per_msg'))} us/msg, emulator"
            f" {fmt(rec.get('emulator_cpu_us_per_msg'))} us/msg, peak-base"
            f" {fmt(rec.get('peak_minus_base_kib'))} KiB, other CPU {rec.get('other_cpu_pct')} %"
        )
        if not rec.get("valid"):
            line += "  INVALID: " + "; ".join(rec["invalid"])[:400]
        log(line)
        if rec.get("profile_file"):
            path = ROOT / rec["profile_file"]
            summary = summarize_busy(path)
            path.with_suffix(".summary.txt").write_text(summary)
            print(summary, flush=True)

    started = time.monotonic()
    plan = [(c, h, a.tokens, rep + 1) for rep in range(a.repeat) for c, h in runs]
    plan += [(c, h, a.memory_tokens, 1) for c, h in memory]
    for client, http, n, rep in plan:
        for attempt in range(1 + a.retry_noisy):
            log(f"{client} HTTP/{'2 (h2c)' if http == 2 else '1.1'} {n:,} tokens (repeat {rep})")
            rec = measure(client, http, n, a)
            rec["repeat"] = rep
            rec["noisy"] = (rec.get("other_cpu_pct") or 0) > a.max_other
            keep(rec)
            if not rec["noisy"]:
                break
            if attempt < a.retry_noisy:
                log(f"other processes used {rec['other_cpu_pct']} % of the CPU: measuring again")
    log(f"done in {time.monotonic() - started:.0f} s; {len(records)} records in {out_path}")
    print_table(records)
    verdict(records, a.tokens, a.memory_tokens)
    return 0 if all(r.get("valid") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
