#!/usr/bin/env python3
"""Patchbay throughput benchmark: the gateway against the database it fronts, in the same run.

For every backend (sqlite, mariadb, postgresql), query (q1 ``SELECT 1``, q2 point lookup by a
random id, q3 100-row range) and concurrency, one *cell* is measured in this order:

1. the direct figure (the denominator): sysbench with the same SQL and the same number of
   threads for MariaDB/PostgreSQL, a single-thread Python ``sqlite3`` loop (``pyloop.py``) for
   SQLite;
2. for every gateway configuration (``--workers`` x ``--pool-size``): ``patchbay serve`` on a free
   loopback port, one response body checked, a sample of responses sized, a warm-up, then
   ``wrk -t2 -cC -dD --latency -s bench/wrk_tmpl.lua`` with ``WRK_PATH``; afterwards the server's
   ``/stats/error`` ring and log are read, and the server is stopped;
3. for SQLite, Datasette (``bench/.venv-datasette``) on the same file, the same way.

A run is *invalid* when wrk saw non-2xx answers or socket errors, when the bytes per response are
outside the sizes of real row bodies (an error body is much shorter), when the server recorded
errors, or when the check of one response body failed. CPU per request is taken from /proc for
the gateway's process tree and the database's processes, and from wait4() for the load
generator; ``other_cpu_pct`` is what the rest of the machine used meanwhile (noise).

Every run appends one JSON line to ``bench/results/<date>.jsonl``; a table is printed at the end.
Standard library only. Loopback only; every step has a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
HOST = "127.0.0.1"
ROWS = 100_000
CLK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1

SQL = {
    "q1": "SELECT 1",
    "q2": "SELECT id,name,price,created FROM items WHERE id=__ID__",
    "q3": "SELECT id,name,price,created FROM items WHERE id BETWEEN __LO__ AND __HI__ ORDER BY id",
}
QUERY_NAMES = {"q1": "SELECT 1", "q2": "point lookup", "q3": "100-row range"}
# Datasette: the same SQL with bound parameters, as in the reference (part c).
DATASETTE_PATH = {
    "q1": "/items.json?sql=SELECT+1&_shape=array",
    "q2": "/items.json?sql=SELECT+id%2Cname%2Cprice%2Ccreated+FROM+items+WHERE+id%3D%3Aid"
    "&id=__ID__&_shape=array",
    "q3": "/items.json?sql=SELECT+id%2Cname%2Cprice%2Ccreated+FROM+items+WHERE+id+BETWEEN"
    "+%3Alo+AND+%3Ahi+ORDER+BY+id&lo=__LO__&hi=__HI__&_shape=array",
}
ROW_42 = [42, "item-000042", 3325.99, "2024-01-01 00:25:54"]


def gateway_path(query: str) -> str:
    return "/db?" + urllib.parse.quote(
        json.dumps({"SQL": SQL[query]}, separators=(",", ":")), safe=""
    )


def fill(template: str, rng: random.Random, fixed: int | None = None) -> str:
    """Replace the wrk tokens like wrk_tmpl.lua does (``fixed`` pins the id / range start)."""
    ident = fixed if fixed is not None else rng.randint(1, ROWS)
    lo = fixed if fixed is not None else rng.randint(1, ROWS - 99)
    return (
        template.replace("__ID__", str(ident))
        .replace("__LO__", str(lo))
        .replace("__HI__", str(lo + 99))
    )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# /proc accounting


def proc_cpu(pid: int) -> float | None:
    """utime + stime of one process (all its threads) and of its reaped children, in seconds.

    Counting reaped children keeps the CPU of PostgreSQL backends that exit during a window
    (the postmaster collects it) and of worker processes.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / CLK


def all_procs() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, comm) for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index(b"(") + 1 : data.rindex(b")")].decode(errors="replace")
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        out[int(entry)] = (ppid, comm)
    return out


def tree(root: int) -> list[int]:
    procs = all_procs()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(p for p, (pp, _) in procs.items() if pp == pid)
    return found


def by_name(names: tuple[str, ...]) -> list[int]:
    return [p for p, (_, comm) in all_procs().items() if comm in names]


def cpu_of(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        value = proc_cpu(pid)
        if value is not None:
            out[pid] = value
    return out


def box_ticks() -> list[float]:
    """CPU seconds of the whole machine so far: user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) / CLK for x in f.readline().split()[1:9]]


def settle(max_wait: float, threshold: float) -> float | None:
    """Wait (up to ``max_wait`` s) for a second in which the machine is under ``threshold`` % busy.

    Returns the busy share of the last second sampled: other people's work on a shared machine
    shows up here, and a run started in a busy second is noise.
    """
    if max_wait <= 0:
        return None
    deadline = time.monotonic() + max_wait
    while True:
        before = box_ticks()
        time.sleep(1.0)
        delta = [b - a for a, b in zip(before, box_ticks(), strict=True)]
        busy = 100 * (sum(delta) - delta[3] - delta[4] - delta[7]) / (sum(delta) or 1.0)
        if busy < threshold or time.monotonic() >= deadline:
            return round(busy, 1)


def tcp_out_segments() -> int:
    """TCP segments sent by the whole machine so far (on loopback each is also received)."""
    with open("/proc/net/snmp") as f:
        lines = [ln.split() for ln in f if ln.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


class CpuWindow:
    """CPU used by named process groups and by the whole box over a measured window."""

    def __init__(self, groups: dict[str, list[int] | Any]) -> None:
        self.groups = groups  # name -> callable returning pids
        self.before = {name: cpu_of(fn()) for name, fn in groups.items()}
        self.everyone = cpu_of(list(all_procs()))
        self.box0 = box_ticks()
        self.segs0 = tcp_out_segments()
        self.t0 = time.monotonic()

    def finish(self, extra: dict[str, float]) -> dict[str, Any]:
        elapsed = time.monotonic() - self.t0
        delta = [b - a for a, b in zip(self.box0, box_ticks(), strict=True)]
        used = {}
        for name, fn in self.groups.items():
            after = cpu_of(fn())
            used[name] = sum(v - self.before[name].get(p, 0.0) for p, v in after.items())
        used.update(extra)
        # Who else used the machine meanwhile (processes that started during the window count
        # from zero; load generators we reaped are not in /proc any more).
        procs = all_procs()
        ours = {p for name, fn in self.groups.items() for p in fn()} | {os.getpid()}
        others = []
        for pid, value in cpu_of(list(procs)).items():
            spent = value - self.everyone.get(pid, 0.0)
            if pid not in ours and spent > 0.05:
                others.append((spent, f"{procs[pid][1]}[{pid}]"))
        others.sort(reverse=True)
        total = sum(delta) or 1.0
        irq = delta[5] + delta[6]
        steal = delta[7]
        busy = total - delta[3] - delta[4]
        # What no process of ours used: other processes (and any unattributed kernel work).
        other = max(0.0, busy - irq - steal - sum(used.values()))
        return {
            "cpu_s": {k: round(v, 3) for k, v in used.items()},
            "box_busy_pct": round(100 * busy / total, 1),
            "irq_softirq_pct": round(100 * irq / total, 1),
            "steal_pct": round(100 * steal / total, 1),
            "other_cpu_pct": round(100 * other / total, 1),
            "other_top": [f"{name} {spent:.2f}s" for spent, name in others[:4]],
            "tcp_segments": tcp_out_segments() - self.segs0,
            "window_s": round(elapsed, 2),
        }


# --------------------------------------------------------------------------------------------
# small HTTP client (raw, so that the byte count matches what wrk counts)


def http_get(port: int, path: str, timeout: float = 10.0) -> tuple[int, bytes, int]:
    """GET over a fresh connection; return (status, body, bytes of the whole response)."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed before the headers")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        if b"content-length" in headers:
            length = int(headers[b"content-length"])
            while len(body) < length:
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while not body.endswith(b"0\r\n\r\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                body += chunk
            raw_len = len(head) + 4 + len(body)
            return status, dechunk(body), raw_len
        return status, body, len(head) + 4 + len(body)


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} during start-up")
        try:
            status, _, _ = http_get(port, path, timeout=2.0)
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready on port {port} within {timeout:g} s")


# --------------------------------------------------------------------------------------------
# body checks


def check_gateway_body(query: str, body: bytes) -> str | None:
    """None if the body is the right DBSlayer answer for the pinned request, else why not."""
    try:
        doc = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    result = doc.get("RESULT") if isinstance(doc, dict) else None
    if not isinstance(result, dict):
        return f"no RESULT object: {body[:300]!r}"
    rows = result.get("ROWS")
    if query == "q1":  # the column is "1" in MySQL and SQLite, "?column?" in PostgreSQL
        ok = rows == [[1]] and isinstance(result.get("HEADER"), list) and len(result["HEADER"]) == 1
    elif query == "q2":
        ok = rows == [ROW_42] and result.get("HEADER") == ["id", "name", "price", "created"]
    else:
        ok = (
            isinstance(rows, list)
            and len(rows) == 100
            and [r[0] for r in rows] == list(range(42, 142))
            and rows[0] == ROW_42
        )
    if not ok or not isinstance(result.get("TYPES"), list):
        return f"unexpected RESULT: {body[:300]!r}"
    return None


def check_datasette_body(query: str, body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except ValueError:
        return f"not JSON: {body[:200]!r}"
    if not isinstance(doc, list):
        return f"not an array: {body[:300]!r}"
    if query == "q1":
        ok = doc == [{"1": 1}]
    elif query == "q2":
        ok = len(doc) == 1 and list(doc[0].values()) == ROW_42
    else:
        ok = len(doc) == 100 and [r.get("id") for r in doc] == list(range(42, 142))
    return None if ok else f"unexpected rows: {body[:300]!r}"


# --------------------------------------------------------------------------------------------
# load generators

UNITS_T = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
UNITS_B = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def parse_wrk(text: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    out["rps"] = float(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M)
        out[f"p{pct}_ms"] = round(float(m.group(1)) * UNITS_T[m.group(2)], 3) if m else None
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)(B|KB|MB|GB|TB) read", text)
    if m:
        out["requests"] = int(m.group(1))
        out["elapsed_s"] = round(float(m.group(2)) * UNITS_T[m.group(3)] / 1e3, 3)
        out["bytes_read"] = int(float(m.group(4)) * UNITS_B[m.group(5)])
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()), strict=True))
        if m
        else None
    )
    return out


def wait_bounded(proc: subprocess.Popen[bytes], limit: float) -> tuple[int, Any]:
    """Reap ``proc`` with its rusage; kill it past ``limit`` seconds or on an interrupt."""
    deadline = time.monotonic() + limit
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    except BaseException:
        proc.kill()
        os.wait4(proc.pid, 0)
        proc.returncode = -9
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage


def run_wrk(
    port: int, path: str, conns: int, duration: float, *, latency: bool = True
) -> tuple[dict[str, Any], float, str]:
    """Run wrk; return (parsed figures, wrk's own CPU seconds, the command as a shell line)."""
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration:g}s"]
    if latency:
        cmd.append("--latency")
    cmd += ["-s", str(BENCH / "wrk_tmpl.lua"), f"http://{HOST}:{port}"]
    env = dict(os.environ, WRK_PATH=path)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, usage = wait_bounded(proc, duration + 30)
        out.seek(0)
        text = out.read().decode(errors="replace")
    shown = f"WRK_PATH='{path}' " + " ".join(
        c if not c.startswith(str(BENCH)) else os.path.relpath(c, ROOT) for c in cmd
    )
    figures = parse_wrk(text)
    figures["wrk_exit"] = proc.returncode
    if figures.get("rps") is None:
        figures["wrk_output"] = text[-2000:]
    return figures, usage.ru_utime + usage.ru_stime, shown


def histogram_pct(text: str, pct: float) -> float | None:
    rows = []
    on = False
    for line in text.splitlines():
        if "distribution" in line and "count" in line:
            on = True
            continue
        if on:
            m = re.match(r"\s*([\d.]+)\s*\|[* ]*\s(\d+)\s*$", line)
            if not m:
                if rows:
                    break
                continue
            rows.append((float(m.group(1)), int(m.group(2))))
    total = sum(c for _, c in rows)
    if not total:
        return None
    need, seen = total * pct / 100.0, 0
    for value, count in rows:
        seen += count
        if seen >= need:
            return value
    return rows[-1][0]


def sysbench_cmd(
    backend: str, a: argparse.Namespace, query: str, conns: int, secs: float
) -> list[str]:
    cmd = ["sysbench", str(BENCH / "sysbench_items.lua")]
    if backend == "mariadb":
        u = urllib.parse.urlsplit(a.mysql_url)
        cmd += [
            "--db-driver=mysql",
            f"--mysql-host={u.hostname}",
            f"--mysql-port={u.port or 3306}",
            f"--mysql-user={u.username}",
            f"--mysql-password={u.password or ''}",
            f"--mysql-db={u.path.lstrip('/')}",
        ]
    else:
        u = urllib.parse.urlsplit(a.pg_url)
        cmd += [
            "--db-driver=pgsql",
            f"--pgsql-host={u.hostname}",
            f"--pgsql-port={u.port or 5432}",
            f"--pgsql-user={u.username}",
            f"--pgsql-password={u.password or ''}",
            f"--pgsql-db={u.path.lstrip('/')}",
        ]
    cmd += [
        f"--threads={conns}",
        f"--time={max(1, round(secs))}",
        f"--query={query}",
        f"--rows={ROWS}",
        "--percentile=99",
        "--histogram=on",
        "run",
    ]
    return cmd


def db_pids(backend: str) -> list[int]:
    if backend == "mariadb":
        return by_name(("mariadbd", "mysqld"))
    if backend == "postgresql":
        return by_name(("postgres",))
    return []


def measure_direct(backend: str, query: str, conns: int, a: argparse.Namespace) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "direct", "backend": backend, "query": query, "conns": conns}
    rec["busy_before_pct"] = settle(a.settle, a.settle_below)
    if backend == "sqlite":
        cmd = [
            sys.executable,
            str(BENCH / "pyloop.py"),
            "sqlite3",
            "--path",
            str(a.sqlite_path),
            "-d",
            f"{a.duration:g}",
            query,
        ]
        rec["target"] = "sqlite3 loop (1 thread)"
        rec["conns"] = 1
        window = CpuWindow({})
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err)
            _, usage = wait_bounded(proc, a.duration + 60)
            out.seek(0)
            err.seek(0)
            stdout = out.read().decode(errors="replace")
            stderr = err.read().decode(errors="replace")
        cpu = window.finish({"db": usage.ru_utime + usage.ru_stime})
        rec["cmd"] = " ".join(
            os.path.relpath(c, ROOT) if c.startswith(str(BENCH)) else c for c in cmd
        )
        try:
            row = json.loads(stdout.strip().splitlines()[-1])
            rec.update(
                rps=row["rps"],
                p50_ms=row["p50_ms"],
                p99_ms=row["p99_ms"],
                requests=row["requests"],
                valid=True,
                invalid=[],
            )
        except (ValueError, IndexError, KeyError):
            rec.update(rps=None, valid=False, invalid=[f"pyloop failed: {stderr[-500:]}"])
        rec.update(cpu)
        return rec
    rec["target"] = "sysbench"
    # Warm-up: the same load, unmeasured (this sysbench build has no --warmup-time).
    if a.warmup > 0:
        subprocess.run(
            sysbench_cmd(backend, a, query, conns, a.warmup),
            capture_output=True,
            timeout=a.warmup + 60,
        )
    cmd = sysbench_cmd(backend, a, query, conns, a.duration)
    window = CpuWindow({"db": lambda: db_pids(backend)})
    with tempfile.TemporaryFile() as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, usage = wait_bounded(p, a.duration + 60)
        out.seek(0)
        text = out.read().decode(errors="replace")
    cpu = window.finish({"client": usage.ru_utime + usage.ru_stime})
    shown = [c for c in cmd if "password" not in c]
    rec["cmd"] = " ".join(
        os.path.relpath(c, ROOT) if c.startswith(str(BENCH)) else c for c in shown
    )
    m = re.search(r"queries:\s+(\d+)\s+\(([\d.]+) per sec", text)
    m99 = re.search(r"99th percentile:\s+([\d.]+)", text)
    merr = re.search(r"ignored errors:\s+(\d+)", text)
    rec["rps"] = float(m.group(2)) if m else None
    rec["requests"] = int(m.group(1)) if m else None
    if rec["requests"]:
        rec["tcp_segments_per_req"] = round(cpu["tcp_segments"] / rec["requests"], 2)
    rec["p50_ms"] = histogram_pct(text, 50)
    rec["p99_ms"] = float(m99.group(1)) if m99 else None
    rec["invalid"] = []
    if rec["rps"] is None:
        rec["invalid"].append("sysbench failed: " + text[-800:])
    if merr and int(merr.group(1)):
        rec["invalid"].append(f"sysbench ignored errors: {merr.group(1)}")
    rec["valid"] = not rec["invalid"]
    rec.update(cpu)
    return rec


# --------------------------------------------------------------------------------------------
# servers


class Server:
    """A server process we started, in its own process group; stopped by its own id."""

    def __init__(self, cmd: list[str], port: int, env: dict[str, str], workdir: Path):
        self.cmd = cmd
        self.port = port
        self.workdir = workdir
        self.log_path = workdir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )

    def pids(self) -> list[int]:
        return tree(self.proc.pid) if self.proc.poll() is None else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def patchbay_cmd(a: argparse.Namespace) -> list[str]:
    exe = Path(sys.executable).with_name("patchbay")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "patchbay"]


def db_url(backend: str, a: argparse.Namespace) -> str:
    if backend == "mariadb":
        return a.mysql_url
    if backend == "postgresql":
        return a.pg_url
    return "sqlite:///" + str(Path(a.sqlite_path).resolve())  # sqlite:////abs/path


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PATCHBAY_")}


def start_gateway(backend: str, cfg: dict[str, Any], a: argparse.Namespace) -> Server:
    port = free_port()
    cmd = [
        *patchbay_cmd(a),
        "serve",
        "-h",
        HOST,
        "-p",
        str(port),
        "--db",
        f"bench={db_url(backend, a)}",
        "--workers",
        str(cfg["workers"]),
        "--pool-size",
        str(cfg["pool_size"]),
    ]
    if cfg.get("pipeline_depth") is not None:
        cmd += ["--pipeline-depth", str(cfg["pipeline_depth"])]
    if a.compat:
        cmd += ["--compat", a.compat]
    workdir = Path(tempfile.mkdtemp(prefix="patchbay-bench-"))
    return Server(cmd, port, clean_env(), workdir)


def start_datasette(a: argparse.Namespace) -> Server:
    port = free_port()
    exe = Path(a.datasette)
    cmd = [str(exe), "serve", str(Path(a.sqlite_path).resolve()), "-h", HOST, "-p", str(port)]
    workdir = Path(tempfile.mkdtemp(prefix="datasette-bench-"))
    return Server(cmd, port, clean_env(), workdir)


def redact(text: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", text)


# --------------------------------------------------------------------------------------------
# one HTTP run


def http_run(
    kind: str, backend: str, query: str, conns: int, cfg: dict[str, Any], a: argparse.Namespace
) -> dict[str, Any]:
    rng = random.Random(query + str(conns))
    rec: dict[str, Any] = {"kind": kind, "backend": backend, "query": query, "conns": conns}
    if kind == "gateway":
        rec["target"] = f"patchbay w{cfg['workers']} p{cfg['pool_size']}"
        rec.update(workers=cfg["workers"], pool_size=cfg["pool_size"], compat=a.compat or "default")
        if cfg.get("pipeline_depth") is not None:
            rec["target"] += f" d{cfg['pipeline_depth']}"
            rec["pipeline_depth"] = cfg["pipeline_depth"]
        template, check, ready = gateway_path(query), check_gateway_body, "/livez"
    else:
        rec["target"] = "datasette"
        template, check, ready = DATASETTE_PATH[query], check_datasette_body, "/-/versions.json"
    rec["path"] = template
    invalid: list[str] = []
    server = start_gateway(backend, cfg, a) if kind == "gateway" else start_datasette(a)
    rec["server_cmd"] = redact(
        " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in server.cmd)
    )
    profile_proc = None
    try:
        wait_ready(server.port, ready, server.proc, timeout=30)
        # 1. one pinned response body must be the right answer
        status, body, _ = http_get(server.port, fill(template, rng, fixed=42))
        rec["check_status"] = status
        problem = check(query, body) if status == 200 else f"HTTP {status}: {body[:200]!r}"
        if problem:
            invalid.append("body check: " + problem)
        # 2. the size of real responses, to judge wrk's bytes per response
        sizes = []
        for _ in range(a.samples):
            status, body, raw = http_get(server.port, fill(template, rng))
            if status == 200:
                sizes.append(raw)
        if not sizes:
            invalid.append("no 200 response among the size samples")
        rec["sample_bytes"] = [min(sizes), max(sizes)] if sizes else None
        # 3. wait for a quiet machine, then warm up
        rec["busy_before_pct"] = settle(a.settle, a.settle_below)
        if a.warmup > 0:
            run_wrk(server.port, template, conns, a.warmup, latency=False)
        # 4. measured run
        groups: dict[str, Any] = {"server": server.pids}
        if backend != "sqlite":
            groups["db"] = lambda: db_pids(backend)
        window = CpuWindow(groups)
        if a.profile and kind == "gateway":
            profile_proc = start_profile(server, a, rec)
        figures, wrk_cpu, shown = run_wrk(server.port, template, conns, a.duration)
        cpu = window.finish({"client": wrk_cpu})
        if profile_proc is not None:
            finish_profile(profile_proc, rec)
            profile_proc = None
        rec.update(figures)
        rec.update(cpu)
        rec["cmd"] = shown
        # 5. validity
        if figures.get("rps") is None:
            invalid.append("wrk failed")
        if figures.get("non2xx"):
            invalid.append(f"{figures['non2xx']} non-2xx responses")
        errs = figures.get("socket_errors")
        if errs and any(errs.values()):
            invalid.append(f"socket errors {errs}")
        if figures.get("requests"):
            bpr = figures["bytes_read"] / figures["requests"]
            rec["bytes_per_response"] = round(bpr, 1)
            if sizes and not (min(sizes) * 0.95 <= bpr <= max(sizes) * 1.05):
                invalid.append(
                    f"bytes per response {bpr:.1f} outside the real bodies' "
                    f"{min(sizes)}..{max(sizes)} (+-5 %): error bodies?"
                )
        if kind == "gateway":
            try:
                status, body, _ = http_get(server.port, "/stats/error")
                ring = json.loads(body) if status == 200 else None
                rec["server_errors"] = len(ring) if isinstance(ring, list) else None
                if ring:
                    invalid.append(f"server error ring not empty: {ring[-1]}")
            except (OSError, ValueError) as exc:
                invalid.append(f"cannot read /stats/error: {exc}")
        for line in server.log_text().splitlines():
            if re.search(r"Traceback|\berror\b|exception", line, re.I) and "Errno 104" not in line:
                invalid.append("server log: " + redact(line.strip())[:300])
                break
        if figures.get("requests"):
            n = figures["requests"]
            rec["cpu_us_per_req"] = {k: round(v * 1e6 / n, 1) for k, v in rec["cpu_s"].items()}
            rec["tcp_segments_per_req"] = round(rec["tcp_segments"] / n, 2)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        invalid.append(f"run failed: {exc}")
        tail = server.log_text()[-1500:]
        if tail:
            rec["server_log_tail"] = redact(tail)
    finally:
        if profile_proc is not None:
            profile_proc.kill()
            profile_proc.wait()
        server.stop()
        shutil.rmtree(server.workdir, ignore_errors=True)
    rec["invalid"] = invalid
    rec["valid"] = not invalid
    return rec


# --------------------------------------------------------------------------------------------
# py-spy profile of the gateway during the measured window


def py_spy() -> str | None:
    near = Path(sys.executable).with_name("py-spy")
    return str(near) if near.exists() else shutil.which("py-spy")


def start_profile(
    server: Server, a: argparse.Namespace, rec: dict[str, Any]
) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        rec["profile_error"] = "py-spy not found (pip install py-spy into this venv)"
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"profile-{rec['backend']}-{rec['query']}-c{rec['conns']}-{stamp}.txt"
    secs = max(1, int(a.duration) - 1)
    cmd = [
        exe,
        "record",
        "-p",
        str(server.proc.pid),
        "-d",
        str(secs),
        "-r",
        str(a.profile_rate),
        "-f",
        "raw",
        "-o",
        str(out),
    ]
    if rec.get("workers", 1) > 1:
        cmd.append("--subprocesses")
    rec["profile_file"] = os.path.relpath(out, ROOT)
    rec["profile_cmd"] = " ".join(
        os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd
    )
    rec["profiled"] = True
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_profile(proc: subprocess.Popen[bytes], rec: dict[str, Any]) -> None:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if proc.returncode:
        rec["profile_error"] = err.decode(errors="replace")[-500:]


def summarize_profile(path: Path, top: int = 25) -> str:
    """Top frames of a py-spy raw (collapsed) profile: self time, inclusive time, by package."""
    total = 0
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    pkg: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        leaf = frames[-1] if frames else "?"
        self_t[leaf] += count
        for f in set(frames):
            incl[f] += count
        m = re.search(r"\((.*)\)$", leaf)
        pkg[package_of(m.group(1) if m else leaf)] += count
    if not total:
        return f"{path}: no samples\n"
    lines = [f"py-spy profile {os.path.relpath(path, ROOT)}: {total} samples (active CPU only)", ""]
    lines.append("Self time by package:")
    for name, n in pkg.most_common(12):
        lines.append(f"  {100 * n / total:5.1f} %  {name}")
    lines.append("")
    lines.append(f"Top {top} functions by self time:")
    for name, n in self_t.most_common(top):
        lines.append(f"  {100 * n / total:5.1f} %  {name}")
    lines.append("")
    lines.append(f"Top {top} functions by inclusive time (below the event loop):")
    skip = re.compile(
        r"^(<module>|main|serve|run|invoke|__call__|Runner\.run|asyncio_run|"
        r"Server\.run|Command\.|Group\.|Context\.|_run_once|run_forever|"
        r"_bootstrap|_main|spawn_main|subprocess_started)",
        re.I,
    )
    shown = 0
    for name, n in incl.most_common():
        if skip.match(name) and 100 * n / total > 50:
            continue
        lines.append(f"  {100 * n / total:5.1f} %  {name}")
        shown += 1
        if shown >= top:
            break
    return "\n".join(lines) + "\n"


def package_of(path: str) -> str:
    for key in (
        "patchbay",
        "uvicorn",
        "asyncmy",
        "asyncpg",
        "orjson",
        "httptools",
        "uvloop",
        "structlog",
        "sqlglot",
        "click",
        "datasette",
    ):
        if f"/{key}/" in path or path.startswith(key):
            return key
    if "/asyncio/" in path:
        return "asyncio (stdlib)"
    if "/lib/python3" in path:
        return "stdlib: " + path.rsplit("/", 1)[-1]
    return path or "?"


# --------------------------------------------------------------------------------------------
# reporting


def cpu_model() -> str | None:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def versions(a: argparse.Namespace) -> dict[str, Any]:
    def out(cmd: list[str]) -> str | None:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return None

    v: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": NCPU,
        "cpu_model": cpu_model(),
        "wrk": out(["wrk", "-v"]),
        "sysbench": out(["sysbench", "--version"]),
    }
    if "mariadb" in a.backends:
        v["mariadb"] = out(["mariadb", "--version"])
        try:
            u = urllib.parse.urlsplit(a.mysql_url)
            env = dict(os.environ, MYSQL_PWD=u.password or "")
            v["mariadb_server"] = subprocess.run(
                [
                    "mariadb",
                    "-N",
                    "-h",
                    u.hostname or HOST,
                    "-P",
                    str(u.port or 3306),
                    "-u",
                    u.username or "root",
                    "-e",
                    "SELECT VERSION()",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                env=env,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if "postgresql" in a.backends:
        try:
            u = urllib.parse.urlsplit(a.pg_url)
            env = dict(os.environ, PGPASSWORD=u.password or "")
            v["postgresql_server"] = subprocess.run(
                [
                    "psql",
                    "-tA",
                    "-h",
                    u.hostname or HOST,
                    "-p",
                    str(u.port or 5432),
                    "-U",
                    u.username or "postgres",
                    "-d",
                    u.path.lstrip("/"),
                    "-c",
                    "SHOW server_version",
                ],
                capture_output=True,
                text=True,
                timeout=10,
                env=env,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    if "sqlite" in a.backends:
        import sqlite3

        v["sqlite"] = sqlite3.sqlite_version
        if Path(a.datasette).exists():
            v["datasette"] = out([a.datasette, "--version"])
    try:
        code = (
            "import importlib.metadata as m, json; print(json.dumps({n: m.version(n) for n in "
            "('patchbay','uvicorn','uvloop','httptools','asyncmy','asyncpg','orjson')}))"
        )
        v["packages"] = json.loads(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, timeout=20
            ).stdout
        )
    except (ValueError, OSError, subprocess.SubprocessError):
        pass
    return v


def calibrate() -> float:
    """µs per ``unquote_to_bytes`` of the q2 query string (best of 5): how fast this CPU runs
    Python right now. The reference machine did 2.25 µs (python-stack-ceiling.md)."""
    import timeit

    qs = gateway_path("q2").partition("?")[2].replace("__ID__", "42").encode()
    n = 20_000
    best = min(timeit.repeat(lambda: urllib.parse.unquote_to_bytes(qs), number=n, repeat=5))
    return round(best / n * 1e6, 2)


def append_record(
    out_path: Path,
    records: list[dict[str, Any]],
    session: dict[str, Any],
    info: dict[str, Any],
    rec: dict[str, Any],
) -> dict[str, Any]:
    """Stamp ``rec`` (time, session, source; versions on the first), keep it, append it as JSON."""
    # The source is hashed again for every record: on a shared work tree it can change between
    # two runs of one session.
    rec = {"ts": round(time.time(), 3), **session, **source_id(), **rec}
    if not records:
        rec["versions"] = info
    records.append(rec)
    with open(out_path, "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def print_rows(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A plain-text table: the header, a rule, the rows, each column as wide as it needs."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def source_id() -> dict[str, Any]:
    """The gateway code under test: git HEAD plus a hash of src/ as it is on disk."""
    h = hashlib.sha256()
    for p in sorted((ROOT / "src").rglob("*.py")):
        h.update(str(p.relative_to(ROOT)).encode())
        h.update(p.read_bytes())
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "src"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        head, dirty = None, None
    return {"git": head, "src_dirty": dirty, "src_sha256": h.hexdigest()[:16]}


def fmt_rps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def fmt_lat(r: dict[str, Any]) -> str:
    p50, p99 = r.get("p50_ms"), r.get("p99_ms")
    if p50 is None and p99 is None:
        return "-"
    return f"{p50 if p50 is not None else '-'} / {p99 if p99 is not None else '-'}"


def reference_for(
    records: list[dict[str, Any]], r: dict[str, Any], kind: str
) -> dict[str, Any] | None:
    """The nearest earlier (else later) record of ``kind`` in the same cell as ``r``."""

    def same(x: dict[str, Any]) -> bool:
        if x["kind"] != kind or x["backend"] != r["backend"] or x["query"] != r["query"]:
            return False
        return x["conns"] == r["conns"] or (kind == "direct" and x["backend"] == "sqlite")

    i = records.index(r)
    before = [x for x in records[:i] if same(x)]
    after = [x for x in records[i + 1 :] if same(x)]
    return before[-1] if before else (after[0] if after else None)


def print_table(records: list[dict[str, Any]]) -> None:
    head = (
        "backend",
        "query",
        "c",
        "target",
        "req/s",
        "p50 / p99 ms",
        "% of direct",
        "x Datasette",
        "CPU us/req srv/db/client",
        "other CPU %",
        "valid",
    )
    rows = []
    for r in records:
        ratio = xds = ""
        if r["kind"] != "direct":
            d = reference_for(records, r, "direct")
            if d and d.get("rps") and r.get("rps"):
                ratio = f"{100 * r['rps'] / d['rps']:.1f} %"
            ds = reference_for(records, r, "datasette") if r["kind"] == "gateway" else None
            if ds and ds.get("rps") and r.get("rps"):
                xds = f"{r['rps'] / ds['rps']:.1f}x"
        cpu = r.get("cpu_us_per_req") or {}
        if r["kind"] == "direct" and r.get("requests") and r.get("cpu_s"):
            cpu = {k: round(v * 1e6 / r["requests"], 1) for k, v in r["cpu_s"].items()}
        cpu_s = (
            "/".join(str(round(cpu[k])) if k in cpu else "-" for k in ("server", "db", "client"))
            if cpu
            else "-"
        )
        target = r["target"] + (" [profiled]" if r.get("profiled") else "")
        rows.append(
            (
                r["backend"],
                r["query"],
                str(r["conns"]),
                target,
                fmt_rps(r.get("rps")),
                fmt_lat(r),
                ratio,
                xds,
                cpu_s,
                "-" if r.get("other_cpu_pct") is None else str(r["other_cpu_pct"]),
                "yes" if r.get("valid") else "NO",
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    bad = [r for r in records if not r.get("valid")]
    if bad:
        print("\nInvalid runs:")
        for r in bad:
            why = "; ".join(r["invalid"])[:500]
            print(f"  {r['backend']} {r['query']} c{r['conns']} {r['target']}: {why}")


# --------------------------------------------------------------------------------------------


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM: unwind like Ctrl-C, so that every server and load generator started is stopped."""
    raise KeyboardInterrupt


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--backends",
        default="sqlite,mariadb,postgresql",
        help="comma list of sqlite, mariadb, postgresql",
    )
    p.add_argument("--queries", default="q1,q2,q3", help="comma list of q1, q2, q3")
    p.add_argument("--conns", default="16,64", help="comma list of wrk/sysbench concurrencies")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up seconds (2)")
    p.add_argument(
        "--workers",
        default="1",
        help="gateway worker processes; a comma list measures each (e.g. 1,2)",
    )
    p.add_argument(
        "--pool-size",
        default="16",
        help="connections per server and worker; a comma list measures each",
    )
    p.add_argument(
        "--pipeline-depth",
        default="",
        help="patchbay --pipeline-depth (MySQL); a comma list measures each (e.g. 1,8)",
    )
    p.add_argument("--compat", choices=["default", "strict"], help="patchbay --compat")
    p.add_argument("--repeat", type=int, default=1, help="measure every cell this many times")
    p.add_argument(
        "--quick", action="store_true", help="smoke check: 2 s runs, 1 s warm-up, 5 size samples"
    )
    p.add_argument("--no-direct", action="store_true", help="skip the direct database runs")
    p.add_argument("--no-datasette", action="store_true", help="skip Datasette on SQLite")
    p.add_argument("--no-gateway", action="store_true", help="skip Patchbay itself")
    p.add_argument(
        "--profile",
        action="store_true",
        help="record every gateway run with py-spy and print its top frames",
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--samples", type=int, default=30, help="responses sized before each run")
    p.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for a quiet machine (0: never)",
    )
    p.add_argument(
        "--settle-below", type=float, default=15.0, help="what counts as quiet: %% of CPU busy"
    )
    p.add_argument("--label", default="", help="free text stored with every record")
    p.add_argument("--out", help="JSONL file to append to (default bench/results/<date>.jsonl)")
    p.add_argument("--sqlite-path", default=str(BENCH / "data" / "items.db"))
    p.add_argument("--mysql-url", default="mysql://bench:bench@127.0.0.1:3306/patchbay_bench")
    p.add_argument("--pg-url", default="postgresql://bench:bench@127.0.0.1:5432/patchbay_bench")
    p.add_argument("--datasette", default=str(BENCH / ".venv-datasette" / "bin" / "datasette"))
    a = p.parse_args()
    signal.signal(signal.SIGTERM, interrupted)

    a.backends = csv_list(a.backends)
    queries = csv_list(a.queries)
    conns = [int(c) for c in csv_list(a.conns)]
    for b in a.backends:
        if b not in ("sqlite", "mariadb", "postgresql"):
            p.error(f"unknown backend {b}")
    for q in queries:
        if q not in SQL:
            p.error(f"unknown query {q}")
    if a.quick:
        a.duration, a.warmup, a.samples = min(a.duration, 2.0), min(a.warmup, 1.0), 5
        a.settle = min(a.settle, 2.0)
    configs = [
        {"workers": int(w), "pool_size": int(s), "pipeline_depth": int(d) if d else None}
        for w, s, d in itertools.product(
            csv_list(a.workers), csv_list(a.pool_size), csv_list(a.pipeline_depth) or [""]
        )
    ]
    for tool in ("wrk",) + (("sysbench",) if {"mariadb", "postgresql"} & set(a.backends) else ()):
        if shutil.which(tool) is None:
            p.error(f"{tool} not found: run bench/setup.sh")
    if "sqlite" in a.backends and not Path(a.sqlite_path).exists():
        p.error(f"{a.sqlite_path} missing: run bench/setup.sh")
    use_datasette = "sqlite" in a.backends and not a.no_datasette
    if use_datasette and not Path(a.datasette).exists():
        p.error(f"{a.datasette} missing: run bench/setup.sh (or pass --no-datasette)")

    RESULTS.mkdir(exist_ok=True)
    out_path = Path(a.out) if a.out else RESULTS / f"{dt.date.today().isoformat()}.jsonl"
    session = {
        "session": dt.datetime.now().isoformat(timespec="seconds"),
        "label": a.label,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "quick": a.quick,
        "host": platform.node(),
        **source_id(),
    }
    info = versions(a)
    session["calibration_unquote_us"] = calibrate()
    log(
        f"CPU calibration: unquote_to_bytes(q2) {session['calibration_unquote_us']} us "
        "(reference machine: 2.25 us)"
    )
    log(f"versions: {json.dumps(info)}")
    log(f"source: {session['git']} dirty={session['src_dirty']} sha={session['src_sha256']}")
    records: list[dict[str, Any]] = []

    def keep(rec: dict[str, Any]) -> None:
        rec = append_record(out_path, records, session, info, rec)
        shown = f"{rec['backend']} {rec['query']} c{rec['conns']} {rec['target']}: "
        shown += f"{fmt_rps(rec.get('rps'))} req/s, p50/p99 {fmt_lat(rec)} ms"
        if rec.get("other_cpu_pct") is not None:
            shown += f", other CPU {rec['other_cpu_pct']} %"
        if rec.get("busy_before_pct") is not None:
            shown += f", busy before {rec['busy_before_pct']} %"
        if (rec.get("other_cpu_pct") or 0) > 10 and rec.get("other_top"):
            shown += f" ({', '.join(rec['other_top'][:2])})"
        if not rec.get("valid"):
            shown += "  INVALID: " + "; ".join(rec["invalid"])[:400]
        log(shown)

    sqlite_direct: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    for backend in a.backends:
        for query in queries:
            for c in conns:
                for rep in range(a.repeat):
                    if not a.no_direct:
                        if backend == "sqlite":
                            if query not in sqlite_direct:
                                log(f"direct {backend} {query}")
                                sqlite_direct[query] = measure_direct(backend, query, c, a)
                                keep(sqlite_direct[query])
                        else:
                            log(f"direct {backend} {query} c{c} (repeat {rep + 1})")
                            keep(measure_direct(backend, query, c, a))
                    if not a.no_gateway:
                        for cfg in configs:
                            log(
                                f"patchbay {backend} {query} c{c} workers={cfg['workers']} "
                                f"pool={cfg['pool_size']} depth={cfg['pipeline_depth']}"
                            )
                            rec = http_run("gateway", backend, query, c, cfg, a)
                            keep(rec)
                            if rec.get("profile_file"):
                                path = ROOT / rec["profile_file"]
                                if path.exists():
                                    summary = summarize_profile(path)
                                    path.with_suffix(".summary.txt").write_text(summary)
                                    print(summary, flush=True)
                    if backend == "sqlite" and use_datasette:
                        log(f"datasette {query} c{c}")
                        keep(http_run("datasette", backend, query, c, {}, a))
    log(
        f"done in {time.monotonic() - started:.0f} s; appended {len(records)} records to "
        f"{os.path.relpath(out_path, ROOT)}"
    )
    print_table(records)
    return 0 if all(r.get("valid") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
