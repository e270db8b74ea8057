#!/usr/bin/env python3
"""Webhook intake benchmark: verified, stored and acknowledged deliveries per second.

For every concurrency and repeat, three servers are measured one after the other, each on a
fresh store:

1. ``bare``: the same server stack with the durable put replaced by a no-op
   (``bench/hooks_bare.py --bare serve ...``): HTTP, ``App.receive``, ``Receiver.handle``, the
   GitHub HMAC check, the envelope (JSON parse), counters, log line and answer, nothing stored.
   The denominator.
2. ``sqlite``: ``patchbay serve --config FILE`` with the default job store (SQLite WAL,
   ``synchronous=FULL``, ``<state_dir>/jobs.db``).
3. ``postgresql``: the same with ``[jobs] store`` in a database created for the run
   (``patchbay_hooks_bench``, dropped and created again before every server start).

Each server gets a GitHub source ``gh``, and each cell is measured with two handler settings
(``--handlers none,noop``): ``none``, no handlers module (intake alone: each delivery is one
message row), and ``noop``, a handlers module with one no-op async handler for ``push`` (each
delivery also stores one job row, and the dispatcher claims and runs those jobs while intake goes
on, in the same process and store). Before the load:
one signed delivery must be answered ``"duplicate":false`` with the expected ``runs``, the same
delivery again ``"duplicate":true`` (stores only), and a bad signature 401. Then a warm-up and
the measured ``wrk -t2 -cC -dD --latency -s bench/hooks_wrk.lua``: one fixed GitHub push body
with a precomputed ``X-Hub-Signature-256``, a unique ``X-GitHub-Delivery`` per request, every
response body checked by the script, and the delivery id of every ``"duplicate":false`` answer
written to a file.

Afterwards the server's ``/v1/stats`` is read and the server is **killed** (SIGKILL to its
process group: no graceful drain that could commit late), and the store is read back. A run is
*valid* when wrk saw no non-2xx answer and no socket error, every answer was ``"duplicate":false``
(no duplicates, no errors), every acknowledged delivery id is in the store (``messages``), the
store holds no more deliveries than were acknowledged plus those still in flight when wrk
stopped (bare: it holds none), the pre-checks passed and the server log has no error.

Records go to ``bench/results/hooks-<date>.jsonl`` like ``run.py``'s (command lines, versions,
source hash, CPU per request, ``other_cpu_pct``, steal), and a table is printed. The helpers are
``run.py``'s. Standard library only; loopback only; every step has a time limit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
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
    by_name,
    calibrate,
    clean_env,
    csv_list,
    fmt_lat,
    fmt_rps,
    free_port,
    interrupted,
    log,
    parse_wrk,
    patchbay_cmd,
    print_rows,
    py_spy,
    redact,
    settle,
    source_id,
    summarize_profile,
    versions,
    wait_bounded,
    wait_ready,
)

TARGETS = ("bare", "sqlite", "postgresql")
SECRET = "bench-s3cret"
SOURCE = "gh"
HOOK_PATH = f"/hooks/{SOURCE}"
HANDLERS_MODULE = "bench_handlers"
HANDLERS_CODE = '''"""One no-op handler for every push: each delivery stores one job, run by the dispatcher."""

from patchbay.webhooks import Context, Router

router = Router()


@router.on("push")
async def noop(ctx: Context) -> None:
    return None
'''
LOG_PROBLEM = re.compile(r"Traceback|\"level\": \"(error|critical)\"")


# --------------------------------------------------------------------------------------------
# the delivery


def push_payload() -> bytes:
    """A GitHub ``push`` event with one commit, shaped and sized like a real one (about 7 KB)."""
    owner = {
        "name": "octo-org",
        "email": None,
        "login": "octo-org",
        "id": 6811672,
        "node_id": "MDEyOk9yZ2FuaXphdGlvbjY4MTE2NzI=",
        "avatar_url": "https://avatars.githubusercontent.com/u/6811672?v=4",
        "gravatar_id": "",
        "url": "https://api.github.com/users/octo-org",
        "html_url": "https://github.com/octo-org",
        "followers_url": "https://api.github.com/users/octo-org/followers",
        "following_url": "https://api.github.com/users/octo-org/following{/other_user}",
        "gists_url": "https://api.github.com/users/octo-org/gists{/gist_id}",
        "starred_url": "https://api.github.com/users/octo-org/starred{/owner}{/repo}",
        "subscriptions_url": "https://api.github.com/users/octo-org/subscriptions",
        "organizations_url": "https://api.github.com/users/octo-org/orgs",
        "repos_url": "https://api.github.com/users/octo-org/repos",
        "events_url": "https://api.github.com/users/octo-org/events{/privacy}",
        "received_events_url": "https://api.github.com/users/octo-org/received_events",
        "type": "Organization",
        "site_admin": False,
    }
    api = "https://api.github.com/repos/octo-org/octo-repo"
    repository: dict[str, Any] = {
        "id": 186853002,
        "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
        "name": "octo-repo",
        "full_name": "octo-org/octo-repo",
        "private": True,
        "owner": owner,
        "html_url": "https://github.com/octo-org/octo-repo",
        "description": "A repository whose pushes Patchbay receives",
        "fork": False,
        "url": "https://github.com/octo-org/octo-repo",
    }
    for name, suffix in (
        ("forks", "/forks"),
        ("keys", "/keys{/key_id}"),
        ("collaborators", "/collaborators{/collaborator}"),
        ("teams", "/teams"),
        ("hooks", "/hooks"),
        ("issue_events", "/issues/events{/number}"),
        ("events", "/events"),
        ("assignees", "/assignees{/user}"),
        ("branches", "/branches{/branch}"),
        ("tags", "/tags"),
        ("blobs", "/git/blobs{/sha}"),
        ("git_tags", "/git/tags{/sha}"),
        ("git_refs", "/git/refs{/sha}"),
        ("trees", "/git/trees{/sha}"),
        ("statuses", "/statuses/{sha}"),
        ("languages", "/languages"),
        ("stargazers", "/stargazers"),
        ("contributors", "/contributors"),
        ("subscribers", "/subscribers"),
        ("subscription", "/subscription"),
        ("commits", "/commits{/sha}"),
        ("git_commits", "/git/commits{/sha}"),
        ("comments", "/comments{/number}"),
        ("issue_comment", "/issues/comments{/number}"),
        ("contents", "/contents/{+path}"),
        ("compare", "/compare/{base}...{head}"),
        ("merges", "/merges"),
        ("archive", "/{archive_format}{/ref}"),
        ("downloads", "/downloads"),
        ("issues", "/issues{/number}"),
        ("pulls", "/pulls{/number}"),
        ("milestones", "/milestones{/number}"),
        ("notifications", "/notifications{?since,all,participating}"),
        ("labels", "/labels{/name}"),
        ("releases", "/releases{/id}"),
        ("deployments", "/deployments"),
    ):
        repository[f"{name}_url"] = api + suffix
    repository.update(
        {
            "created_at": 1557933565,
            "updated_at": "2026-11-28T08:00:00Z",
            "pushed_at": 1764316800,
            "git_url": "git://github.com/octo-org/octo-repo.git",
            "ssh_url": "git@github.com:octo-org/octo-repo.git",
            "clone_url": "https://github.com/octo-org/octo-repo.git",
            "svn_url": "https://github.com/octo-org/octo-repo",
            "homepage": None,
            "size": 59,
            "stargazers_count": 0,
            "watchers_count": 0,
            "language": "Python",
            "has_issues": True,
            "has_projects": True,
            "has_downloads": True,
            "has_wiki": True,
            "has_pages": False,
            "forks_count": 0,
            "archived": False,
            "disabled": False,
            "open_issues_count": 0,
            "license": None,
            "forks": 0,
            "open_issues": 0,
            "watchers": 0,
            "default_branch": "main",
            "stargazers": 0,
            "master_branch": "main",
            "organization": "octo-org",
        }
    )
    author = {"name": "Mona Octocat", "email": "mona@example.com", "username": "mona"}
    commit = {
        "id": "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "tree_id": "9c6f5a1e0f7a0d0d2c0a4c2f1e6a2b0f7f3c6d2a",
        "distinct": True,
        "message": "Intake: store before the acknowledgement\n\nSigned-off-by: Mona Octocat",
        "timestamp": "2026-11-28T08:00:00Z",
        "url": "https://github.com/octo-org/octo-repo/commit/4b825dc642cb6eb9a060e54bf8d69288fbee4904",
        "author": author,
        "committer": author,
        "added": ["src/intake.py"],
        "removed": [],
        "modified": ["README.md", "src/patchbay/webhooks/routes.py"],
    }
    sender = dict(owner, login="mona", id=583231, type="User", node_id="MDQ6VXNlcjU4MzIzMQ==")
    event = {
        "ref": "refs/heads/main",
        "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "after": commit["id"],
        "repository": repository,
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "organization": {k: owner[k] for k in ("login", "id", "node_id", "url", "avatar_url")},
        "sender": sender,
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": "https://github.com/octo-org/octo-repo/compare/6113728f27ae...4b825dc642cb",
        "commits": [commit],
        "head_commit": commit,
    }
    return json.dumps(event, indent=2).encode()


def github_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


def post(
    port: int, body: bytes, delivery: str, signature: str, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One delivery over a fresh connection; (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(
            "POST",
            HOOK_PATH,
            body=body,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": signature,
            },
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, timeout: float = 10.0) -> Any:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        data = response.read()
        return json.loads(data) if response.status == 200 else None
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# stores


def psql(admin_url: str, sql: str, *, db: str | None = None, timeout: float = 60.0) -> str:
    """Run SQL with psql as the admin URL's user (trust auth); return stdout."""
    u = urllib.parse.urlsplit(admin_url)
    cmd = [
        "psql",
        "-X",
        "-q",
        "-tA",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        u.hostname or HOST,
        "-p",
        str(u.port or 5432),
        "-U",
        u.username or "postgres",
        "-d",
        db or u.path.lstrip("/") or "postgres",
        "-c",
        sql,
    ]
    env = dict(os.environ, PGPASSWORD=u.password or "")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode:
        raise RuntimeError(f"psql failed: {p.stderr.strip()[-500:]}")
    return p.stdout


def pg_store_url(a: argparse.Namespace) -> str:
    u = urllib.parse.urlsplit(a.pg_admin_url)
    return urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + a.pg_db, "", ""))


def fresh_pg_database(a: argparse.Namespace) -> None:
    psql(a.pg_admin_url, f'DROP DATABASE IF EXISTS "{a.pg_db}" WITH (FORCE)')
    psql(a.pg_admin_url, f'CREATE DATABASE "{a.pg_db}"')


def stored_keys(target: str, workdir: Path, a: argparse.Namespace) -> list[str]:
    """Every delivery key in the store (the server is stopped)."""
    if target == "postgresql":
        out = psql(a.pg_admin_url, "SELECT key FROM patchbay.messages", db=a.pg_db, timeout=120)
        return [line for line in out.splitlines() if line]
    path = workdir / "var" / "jobs.db"
    if not path.exists():
        return []
    conn = sqlite3.connect(path, timeout=10)
    try:
        return [key for (key,) in conn.execute("SELECT key FROM messages")]
    finally:
        conn.close()


def store_extras(target: str, workdir: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Jobs by status and, for PostgreSQL, the database's commit count (whole server life)."""
    out: dict[str, Any] = {}
    try:
        if target == "postgresql":
            rows = psql(
                a.pg_admin_url,
                "SELECT status, count(*) FROM patchbay.jobs GROUP BY status",
                db=a.pg_db,
            )
            out["jobs"] = {s: int(n) for s, _, n in (r.partition("|") for r in rows.split())}
            time.sleep(0.5)  # let the killed server's backends report their statistics
            commits = psql(
                a.pg_admin_url,
                f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{a.pg_db}'",
            ).strip()
            out["pg_xact_commit"] = int(commits) if commits.isdigit() else None
        else:
            path = workdir / "var" / "jobs.db"
            if path.exists():
                conn = sqlite3.connect(path, timeout=10)
                try:
                    out["jobs"] = dict(
                        conn.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                    )
                finally:
                    conn.close()
                wal = path.with_name("jobs.db-wal")
                out["sqlite_bytes"] = path.stat().st_size + (
                    wal.stat().st_size if wal.exists() else 0
                )
    except (OSError, RuntimeError, sqlite3.Error, subprocess.SubprocessError, ValueError) as exc:
        out["extras_error"] = str(exc)[:300]
    return out


# --------------------------------------------------------------------------------------------
# servers


def write_config(workdir: Path, target: str, handlers: str, a: argparse.Namespace) -> Path:
    store = pg_store_url(a) if target == "postgresql" else ""
    lines = [
        "[server]",
        f'state_dir = "{workdir / "var"}"',
        "",
        "[jobs]",
        f'store = "{store}"',
        "",
        f"[webhooks.sources.{SOURCE}]",
        'provider = "github"',
        f'secrets = ["{SECRET}"]',
    ]
    if handlers == "noop":
        lines.append(f'handlers = "{HANDLERS_MODULE}:router"')
        (workdir / f"{HANDLERS_MODULE}.py").write_text(HANDLERS_CODE)
    path = workdir / "patchbay.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def start_server(
    target: str,
    workers: int,
    handlers: str,
    workdir: Path,
    a: argparse.Namespace,
    batches: Path | None,
) -> Server:
    port = free_port()
    config = write_config(workdir, target, handlers, a)
    args = ["serve", "--config", str(config), "-h", HOST, "-p", str(port)]
    args += ["--workers", str(workers)]
    launcher = [sys.executable, str(BENCH / "hooks_bare.py")]
    if target == "bare":
        cmd = [*launcher, "--bare", *args]
    elif batches is not None:
        cmd = [*launcher, "--batches", str(batches), *args]
    else:
        cmd = [*patchbay_cmd(a), *args]
    return Server(cmd, port, clean_env(), workdir)


def kill(server: Server) -> None:
    """SIGKILL the server's process group: what was acknowledged must already be durable."""
    if server.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=30)
    server.stop()  # closes the log; the process is gone


def context_switches(pids: list[int]) -> dict[str, int]:
    """Voluntary and involuntary context switches so far, summed over every thread of ``pids``.

    A voluntary switch is a thread blocking (on epoll, a futex such as the GIL, a queue, fsync);
    per delivery it shows how often intake hands work between threads and processes.
    """
    out = {"voluntary": 0, "involuntary": 0}
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            out["voluntary"] += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            out["involuntary"] += int(line.split()[1])
            except OSError:
                continue
    return out


def db_pids(target: str) -> list[int]:
    return by_name(("postgres",)) if target == "postgresql" else []


# --------------------------------------------------------------------------------------------
# load


def run_wrk(
    port: int,
    conns: int,
    duration: float,
    env_extra: dict[str, str],
    *,
    latency: bool = True,
) -> tuple[dict[str, Any], float, str]:
    """wrk with hooks_wrk.lua; (parsed figures plus the script's counts, CPU s, shown command)."""
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{duration:g}s"]
    if latency:
        cmd.append("--latency")
    cmd += ["-s", str(BENCH / "hooks_wrk.lua"), f"http://{HOST}:{port}"]
    env = dict(os.environ, **env_extra)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, usage = wait_bounded(proc, duration + 30)
        out.seek(0)
        text = out.read().decode(errors="replace")
    shown_env = " ".join(
        f"{k}={os.path.relpath(v, ROOT) if v.startswith(str(ROOT)) else v}"
        for k, v in env_extra.items()
        if k != "HOOKS_SIG"
    )
    shown = (
        "HOOKS_SIG=sha256=<hmac> "
        + shown_env
        + " "
        + " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd)
    )
    figures = parse_wrk(text)
    figures["wrk_exit"] = proc.returncode
    counts = {"sent": 0, "answered": 0, "ok": 0, "dup": 0, "other": 0}
    threads = 0
    for m in re.finditer(r"^HOOKS tid=\d+ (.*)$", text, re.M):
        threads += 1
        for k, v in re.findall(r"(\w+)=(\d+)", m.group(1)):
            counts[k] += int(v)
    figures["script"] = counts if threads else None
    if figures.get("rps") is None or not threads:
        figures["wrk_output"] = text[-2000:]
    return figures, usage.ru_utime + usage.ru_stime, shown


def read_acked(directory: Path) -> list[str]:
    keys: list[str] = []
    for path in sorted(directory.glob("acked-*.txt")):
        keys.extend(line for line in path.read_text().splitlines() if line)
    return keys


# --------------------------------------------------------------------------------------------
# one run


def measure(
    target: str,
    conns: int,
    workers: int,
    handlers: str,
    a: argparse.Namespace,
    body_path: Path,
    signature: str,
    *,
    batches: bool = False,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "kind": "hooks",
        "target": target,
        "conns": conns,
        "workers": workers,
        "handlers": handlers,
        "body_bytes": body_path.stat().st_size,
    }
    if batches:
        rec["instrumented"] = "batches"
    invalid: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix=f"patchbay-hooks-{target}-"))
    acked_dir = workdir / "acked"
    acked_dir.mkdir()
    batch_dir = workdir / "batches" if batches else None
    server: Server | None = None
    profile_proc: subprocess.Popen[bytes] | None = None
    body = body_path.read_bytes()
    try:
        if target == "postgresql":
            fresh_pg_database(a)
        server = start_server(target, workers, handlers, workdir, a, batch_dir)
        rec["server_cmd"] = redact(
            " ".join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in server.cmd)
        )
        wait_ready(server.port, "/readyz", server.proc, timeout=60)
        # 1. pre-checks: one real delivery, its duplicate, a forged one
        expected_runs = 1 if handlers == "noop" and target != "bare" else 0
        status, answer = post(server.port, body, "check-1", signature)
        want = {"delivery": "check-1", "duplicate": False, "runs": expected_runs}
        if status != 200 or json.loads(answer or b"null") != want:
            invalid.append(f"check: first delivery answered {status} {answer[:200]!r}")
        status, answer = post(server.port, body, "check-1", signature)
        if target != "bare" and (status != 200 or b'"duplicate":true' not in answer):
            invalid.append(f"check: repeated delivery answered {status} {answer[:200]!r}")
        forged = "sha256=" + "0" * 64
        status, answer = post(server.port, body, "check-2", forged)
        if status != 401:
            invalid.append(f"check: forged signature answered {status} {answer[:200]!r}")
        # 2. quiet machine, warm-up
        rec["busy_before_pct"] = settle(a.settle, a.settle_below)
        env = {
            "HOOKS_BODY": str(body_path),
            "HOOKS_SIG": signature,
            "HOOKS_PATH": HOOK_PATH,
            "HOOKS_OUT": str(acked_dir),
        }
        unanswered = 0
        answered_ok = 0
        if a.warmup > 0:
            warm, _, _ = run_wrk(
                server.port, conns, a.warmup, dict(env, HOOKS_RUN="w"), latency=False
            )
            script = warm.get("script") or {}
            rec["warmup"] = {"requests": warm.get("requests"), **script}
            unanswered += script.get("sent", 0) - script.get("answered", 0)
            answered_ok += script.get("ok", 0)
            if script.get("dup") or script.get("other") or warm.get("non2xx"):
                invalid.append(f"warm-up answers not all stored: {script} {warm.get('non2xx')}")
        # 3. measured run
        groups: dict[str, Any] = {"server": server.pids}
        if target == "postgresql":
            groups["db"] = lambda: db_pids(target)
        window = CpuWindow(groups)
        switches0 = context_switches(server.pids())
        if a.profile:
            profile_proc = start_profile(server, rec, workers, a)
        figures, wrk_cpu, shown = run_wrk(server.port, conns, a.duration, dict(env, HOOKS_RUN="m"))
        cpu = window.finish({"client": wrk_cpu})
        switches1 = context_switches(server.pids())
        if profile_proc is not None:
            finish_profile(profile_proc, rec)
            profile_proc = None
        rec.update(figures)
        rec.update(cpu)
        rec["cmd"] = shown
        script = figures.get("script") or {}
        unanswered += script.get("sent", 0) - script.get("answered", 0)
        answered_ok += script.get("ok", 0)
        if figures.get("rps") is None or not script:
            invalid.append("wrk failed")
        if figures.get("non2xx"):
            invalid.append(f"{figures['non2xx']} non-2xx responses")
        errs = figures.get("socket_errors")
        if errs and any(errs.values()):
            invalid.append(f"socket errors {errs}")
        if script.get("dup") or script.get("other"):
            invalid.append(f"answers that were not a stored delivery: {script}")
        if figures.get("requests") and script.get("answered") != figures["requests"]:
            rec["note_answered"] = "wrk's request count and the script's differ"
        if figures.get("requests"):
            n = figures["requests"]
            rec["cpu_us_per_req"] = {k: round(v * 1e6 / n, 1) for k, v in rec["cpu_s"].items()}
            rec["tcp_segments_per_req"] = round(rec["tcp_segments"] / n, 2)
            rec["server_ctx_switches_per_req"] = {
                k: round((switches1[k] - switches0[k]) / n, 2) for k in switches0
            }
        # 4. the server's own view, then kill it (graceful only when counting batches)
        try:
            stats = get_json(server.port, "/v1/stats")
            hooks = (stats or {}).get("webhooks") or {}
            rec["server_ack_latency_ms"] = hooks.get("ack_latency")
            rejected = {k: v.get("rejected") for k, v in (hooks.get("sources") or {}).items()}
            rec["server_rejected"] = {k: v for k, v in rejected.items() if v}
        except (OSError, ValueError, http.client.HTTPException) as exc:
            rec["server_stats_error"] = str(exc)
        if batches:
            server.stop()
        else:
            kill(server)
        # 5. durability: every acknowledged delivery is in the store
        acked = read_acked(acked_dir)
        stored = [k for k in stored_keys(target, workdir, a) if not k.startswith("check-")]
        acked_set, stored_set = set(acked), set(stored)
        missing = acked_set - stored_set
        extra = stored_set - acked_set
        rec["durability"] = {
            "acked": len(acked),
            "acked_by_script": answered_ok,
            "stored": len(stored),
            "acked_not_stored": len(missing),
            "stored_not_acked": len(extra),
            "in_flight_at_stop": unanswered,
        }
        if len(acked) != answered_ok:
            invalid.append(f"{len(acked)} acked ids written but {answered_ok} ok answers counted")
        if len(acked_set) != len(acked):
            invalid.append(f"{len(acked) - len(acked_set)} delivery ids acknowledged twice")
        if target == "bare":
            if stored:
                invalid.append(f"bare endpoint stored {len(stored)} deliveries")
        else:
            if missing:
                invalid.append(
                    f"{len(missing)} acknowledged deliveries not in the store, e.g. "
                    f"{sorted(missing)[:3]}"
                )
            if len(extra) > unanswered:
                invalid.append(
                    f"{len(extra)} stored deliveries never acknowledged, more than the "
                    f"{unanswered} in flight when wrk stopped"
                )
            rec.update(store_extras(target, workdir, a))
            commits = rec.get("pg_xact_commit")
            if commits and stored:
                rec["pg_commits_per_delivery"] = round(commits / len(stored), 3)
        if batch_dir is not None:
            rec["batches"] = [
                json.loads(p.read_text()) for p in sorted(batch_dir.glob("batches-*.json"))
            ]
        for line in server.log_text().splitlines():
            if LOG_PROBLEM.search(line):
                invalid.append("server log: " + redact(line.strip())[:300])
                break
        rec["log_lines"] = len(server.log_text().splitlines())
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError, sqlite3.Error) as exc:
        invalid.append(f"run failed: {exc}")
        if server is not None:
            tail = server.log_text()[-1500:]
            if tail:
                rec["server_log_tail"] = redact(tail)
    finally:
        if profile_proc is not None:
            profile_proc.kill()
            profile_proc.wait()
        if server is not None:
            kill(server)
        shutil.rmtree(workdir, ignore_errors=True)
    rec["invalid"] = invalid
    rec["valid"] = not invalid
    return rec


def start_profile(
    server: Server, rec: dict[str, Any], workers: int, a: argparse.Namespace
) -> subprocess.Popen[bytes] | None:
    exe = py_spy()
    if exe is None:
        rec["profile_error"] = "py-spy not found (pip install py-spy into this venv)"
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"profile-hooks-{rec['target']}-{rec['handlers']}-c{rec['conns']}-w{workers}"
    out = RESULTS / f"{name}-{stamp}.txt"
    secs = max(1, int(a.duration) - 1)
    cmd = [exe, "record", "-p", str(server.proc.pid), "-d", str(secs), "-r", str(a.profile_rate)]
    cmd += ["-f", "raw", "-o", str(out)]
    if workers > 1:
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


def thread_of(stack: str) -> str:
    """Which thread a py-spy raw stack is from: ``loop``, ``store``, ``executor`` or ``idle``.

    py-spy counts a thread blocked in a C call (``SimpleQueue.get``) as active: the
    executor's idle workers (leaf ``_worker``) are such samples, reported as ``idle``. The SQLite
    store's writer is a process of its own (``patchbay.jobs.sqlite_writer``), not profiled here;
    ``store`` is the store's thread of older trees (``SqliteStore._run``), kept so that their
    profiles still read the same.
    """
    frames = stack.split(";")
    if not frames[0].startswith("Thread._bootstrap"):
        return "loop"
    leaf = frames[-1]
    if leaf.startswith(("SqliteStore._run ", "_worker (")):
        return "idle"
    return "store" if any(f.startswith("SqliteStore._run ") for f in frames) else "executor"


def summarize_threads(path: Path) -> str:
    """Samples by thread, then ``run.py``'s summary of the event loop's thread alone."""
    shares: dict[str, int] = {}
    loop_lines = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        kind = thread_of(stack)
        shares[kind] = shares.get(kind, 0) + int(n)
        if kind == "loop":
            loop_lines.append(line)
    total = sum(shares.values()) or 1
    head = [f"py-spy profile {os.path.relpath(path, ROOT)}: samples by thread"]
    for kind in ("loop", "store", "executor", "idle"):
        head.append(f"  {100 * shares.get(kind, 0) / total:5.1f} %  {kind}")
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(loop_lines) + "\n")
    try:
        loop = summarize_profile(Path(f.name))
    finally:
        os.unlink(f.name)
    loop_head, _, loop_rest = loop.partition("\n")
    count = loop_head.rpartition(": ")[2]
    return "\n".join(head) + f"\n\nThe event loop's thread only ({count}):\n" + loop_rest


# --------------------------------------------------------------------------------------------
# reporting


def cell(r: dict[str, Any]) -> tuple[int, int, str]:
    return r["conns"], r["workers"], r["handlers"]


def bare_for(records: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """The nearest earlier (else later) valid bare run of the same cell."""
    same = [
        x
        for x in records
        if x["target"] == "bare" and cell(x) == cell(r) and x.get("valid") and x.get("rps")
    ]
    before = [x for x in same if records.index(x) < records.index(r)]
    return before[-1] if before else (same[0] if same else None)


def print_table(records: list[dict[str, Any]]) -> None:
    head = (
        "target",
        "c",
        "w",
        "handlers",
        "req/s",
        "p50 / p99 ms",
        "% of bare",
        "CPU us/req srv/db/client",
        "acked / stored",
        "other CPU %",
        "steal %",
        "valid",
    )
    rows = []
    for r in records:
        ratio = ""
        if r["target"] != "bare":
            b = bare_for(records, r)
            if b and r.get("rps"):
                ratio = f"{100 * r['rps'] / b['rps']:.1f} %"
        cpu = r.get("cpu_us_per_req") or {}
        cpu_s = "/".join(
            str(round(cpu[k])) if k in cpu else "-" for k in ("server", "db", "client")
        )
        d = r.get("durability") or {}
        durable = f"{d.get('acked', '-')} / {d.get('stored', '-')}" if d else "-"
        target = r["target"] + (" [profiled]" if r.get("profiled") else "")
        target += " [batches]" if r.get("instrumented") else ""
        rows.append(
            (
                target,
                str(r["conns"]),
                str(r["workers"]),
                r["handlers"],
                fmt_rps(r.get("rps")),
                fmt_lat(r),
                ratio,
                cpu_s,
                durable,
                "-" if r.get("other_cpu_pct") is None else str(r["other_cpu_pct"]),
                "-" if r.get("steal_pct") is None else str(r["steal_pct"]),
                "yes" if r.get("valid") else "NO",
            )
        )
    print_rows(head, rows)
    summary = []
    groups: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("valid") and r.get("rps") and not r.get("profiled") and not r.get("instrumented"):
            groups.setdefault((r["target"], *cell(r)), []).append(r)
    for (target, conns, workers, handlers), runs in groups.items():
        rps = statistics.median(x["rps"] for x in runs)
        p99 = statistics.median(x["p99_ms"] for x in runs if x.get("p99_ms") is not None)
        base = groups.get(("bare", conns, workers, handlers))
        share = ""
        if base and target != "bare":
            share = f"{100 * rps / statistics.median(x['rps'] for x in base):.1f} %"
        summary.append(
            (
                target,
                str(conns),
                str(workers),
                handlers,
                str(len(runs)),
                f"{rps:,.0f} ({min(x['rps'] for x in runs):,.0f}-{max(x['rps'] for x in runs):,.0f})",
                f"{p99:g}",
                share,
            )
        )
    if summary:
        print("\nMedians over valid runs (share = median ÷ median bare of the same cell):")
        print_rows(("target", "c", "w", "handlers", "n", "req/s", "p99 ms", "% of bare"), summary)
    bad = [r for r in records if not r.get("valid")]
    if bad:
        print("\nInvalid runs:")
        for r in bad:
            why = "; ".join(r["invalid"])[:500]
            print(f"  {r['target']} c{r['conns']} w{r['workers']}: {why}")


# --------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--targets", default=",".join(TARGETS), help="comma list of " + ", ".join(TARGETS)
    )
    p.add_argument("--conns", default="16,64", help="comma list of wrk connections")
    p.add_argument("--workers", default="1", help="server worker processes; a comma list sweeps")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured warm-up seconds (2)")
    p.add_argument("--repeat", type=int, default=2, help="measure every cell this many times (2)")
    p.add_argument(
        "--handlers",
        default="none,noop",
        help="comma list of none (deliveries only: intake alone) and noop (one no-op async "
        "handler per push: a job row per delivery, run by the dispatcher meanwhile)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke check: 2 s runs, 1 s warm-up, 1 repeat"
    )
    p.add_argument(
        "--profile", action="store_true", help="py-spy on every run (its figures are [profiled])"
    )
    p.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument(
        "--batches",
        action="store_true",
        help="also run each store once more through hooks_bare.py --batches (group commit sizes; "
        "graceful stop; reported apart)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for a quiet machine (0: never)",
    )
    p.add_argument(
        "--settle-below", type=float, default=15.0, help="what counts as quiet: %% of CPU busy"
    )
    p.add_argument("--pg-admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--pg-db", default="patchbay_hooks_bench", help="created and dropped by the run")
    p.add_argument("--label", default="", help="free text stored with every record")
    p.add_argument(
        "--out", help="JSONL file to append to (default bench/results/hooks-<date>.jsonl)"
    )
    a = p.parse_args()
    signal.signal(signal.SIGTERM, interrupted)

    targets = csv_list(a.targets)
    for t in targets:
        if t not in TARGETS:
            p.error(f"unknown target {t}")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", a.pg_db):
        p.error("--pg-db: lower-case letters, digits and _ only")
    conns = [int(c) for c in csv_list(a.conns)]
    handler_sets = csv_list(a.handlers)
    for h in handler_sets:
        if h not in ("none", "noop"):
            p.error(f"unknown --handlers value {h}")
    workers = [int(w) for w in csv_list(a.workers)]
    if a.quick:
        a.duration, a.warmup, a.repeat = min(a.duration, 2.0), min(a.warmup, 1.0), 1
        a.settle = min(a.settle, 2.0)
    if shutil.which("wrk") is None:
        p.error("wrk not found: run bench/setup.sh")
    if "postgresql" in targets and shutil.which("psql") is None:
        p.error("psql not found")

    # One run at a time: two would share the PostgreSQL database (and the machine's cores).
    lock = open(Path(tempfile.gettempdir()) / "patchbay-hooks-bench.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        p.error("another bench/hooks.py is running on this machine")

    RESULTS.mkdir(exist_ok=True)
    out_path = Path(a.out) if a.out else RESULTS / f"hooks-{dt.date.today().isoformat()}.jsonl"
    session = {
        "session": dt.datetime.now().isoformat(timespec="seconds"),
        "label": a.label,
        "duration_s": a.duration,
        "warmup_s": a.warmup,
        "quick": a.quick,
        "host": platform.node(),
        **source_id(),
    }
    info = versions(
        argparse.Namespace(
            backends=["sqlite", "postgresql"] if "postgresql" in targets else ["sqlite"],
            pg_url=a.pg_admin_url,
            mysql_url="",
            datasette=str(BENCH / ".venv-datasette" / "bin" / "datasette"),
        )
    )
    info.pop("sysbench", None)
    with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
        if "postgresql" in targets:
            info["postgresql_settings"] = dict(
                line.split("|", 1)
                for line in psql(
                    a.pg_admin_url,
                    "SELECT name, setting FROM pg_settings WHERE name IN ('fsync',"
                    "'synchronous_commit','wal_sync_method','commit_delay','full_page_writes')",
                ).split()
            )
    info["state_dir_fs"] = subprocess.run(
        ["df", "-T", tempfile.gettempdir()], capture_output=True, text=True, timeout=10
    ).stdout.splitlines()[-1]
    session["calibration_unquote_us"] = calibrate()
    log(
        f"CPU calibration: unquote_to_bytes(q2) {session['calibration_unquote_us']} us "
        "(reference machine: 2.25 us)"
    )
    log(f"versions: {json.dumps(info)}")
    log(f"source: {session['git']} dirty={session['src_dirty']} sha={session['src_sha256']}")

    body = push_payload()
    signature = github_signature(body)
    body_dir = Path(tempfile.mkdtemp(prefix="patchbay-hooks-body-"))
    body_path = body_dir / "push.json"
    body_path.write_bytes(body)
    log(f"body: GitHub push, {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}")
    records: list[dict[str, Any]] = []

    def keep(rec: dict[str, Any]) -> None:
        rec = append_record(out_path, records, session, info, rec)
        shown = f"{rec['target']} c{rec['conns']} w{rec['workers']} {rec['handlers']}: "
        shown += f"{fmt_rps(rec.get('rps'))} req/s, p50/p99 {fmt_lat(rec)} ms"
        d = rec.get("durability")
        if d and rec["target"] == "bare":
            shown += f", acked {d['acked']} stored {d['stored']} (bare: stores nothing)"
        elif d:
            shown += f", acked {d['acked']} stored {d['stored']} missing {d['acked_not_stored']}"
        if rec.get("other_cpu_pct") is not None:
            shown += f", other CPU {rec['other_cpu_pct']} %, steal {rec.get('steal_pct')} %"
        if (rec.get("other_cpu_pct") or 0) > 10 and rec.get("other_top"):
            shown += f" ({', '.join(rec['other_top'][:2])})"
        if rec.get("batches"):
            shown += " batches " + json.dumps(
                [
                    {
                        k: b[k]
                        for k in ("commits", "puts", "mean_batch", "max_batch", "mean_commit_ms")
                    }
                    for b in rec["batches"]
                ]
            )
        if not rec.get("valid"):
            shown += "  INVALID: " + "; ".join(rec["invalid"])[:400]
        log(shown)

    def summarize(rec: dict[str, Any]) -> None:
        path = ROOT / rec["profile_file"] if rec.get("profile_file") else None
        if path is not None and path.exists():
            summary = summarize_threads(path)
            path.with_suffix(".summary.txt").write_text(summary)
            print(summary, flush=True)

    started = time.monotonic()
    try:
        for rep in range(a.repeat):
            for w in workers:
                for handlers in handler_sets:
                    for c in conns:
                        for target in targets:
                            log(f"{target} c{c} w{w} handlers={handlers} (repeat {rep + 1})")
                            rec = measure(target, c, w, handlers, a, body_path, signature)
                            keep(rec)
                            summarize(rec)
        if a.batches:
            for w in workers:
                for handlers in handler_sets:
                    for target in targets:
                        if target != "bare":
                            c = max(conns)
                            log(f"{target} c{c} w{w} handlers={handlers} [batches]")
                            keep(
                                measure(
                                    target, c, w, handlers, a, body_path, signature, batches=True
                                )
                            )
    finally:
        shutil.rmtree(body_dir, ignore_errors=True)
        if "postgresql" in targets:
            with contextlib.suppress(RuntimeError, OSError, subprocess.SubprocessError):
                psql(a.pg_admin_url, f'DROP DATABASE IF EXISTS "{a.pg_db}" WITH (FORCE)')
    log(
        f"done in {time.monotonic() - started:.0f} s; appended {len(records)} records to "
        f"{os.path.relpath(out_path, ROOT)}"
    )
    print_table(records)
    return 0 if all(r.get("valid") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
