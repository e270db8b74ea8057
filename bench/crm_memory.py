#!/usr/bin/env python3
"""Peak memory of a 20 MB Zoho CRM upload: Patchbay's client against Zoho's SDK, same emulator.

Every upload runs in a process of its own (this script's ``child`` and ``cli`` modes, or the
``patchbay`` entry point itself), against one Zoho emulator served by a process of its own
(``emulator`` mode). Three clients:

- **patchbay**: ``patchbay.crm.client.CrmClient(CrmSettings(...), store=None)`` and
  ``await client.upload("Leads", record, path)`` (the file streamed from disk);
- **sdk**: ``zohocrmsdk8-0`` pointed at the emulator as ``tests/integration/test_zoho_sdk.py``
  does (``DataCenter.Environment``, ``FileStore`` in a temporary directory,
  ``OAuthToken(..., find_user=False)``, ``upload_attachments`` with a ``StreamWrapper``);
- **cli**: ``patchbay crm attach --config FILE Leads RECORD PATH``, the real entry point.

What "the file adds" means, measured three ways (each its own process, so that one way's
overhead does not show in another's figures):

- ``rss``: after the imports and the client's set-up, ``gc.collect()``, VmRSS read from
  ``/proc/self/status``; then the kernel's high-water mark is reset
  (``echo 5 > /proc/self/clear_refs``), the upload made, and VmHWM read again.
  adds = VmHWM during the upload - VmRSS right before it.
- ``trace``: ``tracemalloc`` started before anything is imported; after set-up the traced size
  is read and the peak reset; adds = traced peak during the upload - traced size before it
  (Python allocations only: the C side of OpenSSL, zlib and the like are not counted).
- ``process`` (``ru_maxrss`` of the whole process, read by the parent with ``wait4``):
  the peak of a process that uploads the 20 MB file minus the peak of one that does the same
  with a 1 KiB file ("small") or does everything but the upload ("none": imports, set-up, for
  the CLI ``patchbay crm list``). Includes import-time peaks, which cancel out, and which hide
  an upload that stays under them. Careful: a child's ``ru_maxrss`` starts at its *parent's*
  RSS high-water mark (the kernel keeps the pre-exec address space's peak across exec), so
  this process resets its own mark before each start and records its RSS as the floor
  (``parent_rss_kib``); a run whose ``ru_maxrss`` is not above it is invalid. The same floor
  is in the children's own ``getrusage`` (``maxrss_*`` fields); VmHWM (``*hwm*``) has none.

With ``rss`` and ``trace``, the library clients are also measured "warm": a 1 KiB upload
first (to another record, not measured), then the 20 MB one measured, in the same process, as
in a long-running gateway where the first request's one-time costs are already paid.

For the CLI the ``rss`` and ``trace`` ways run it through a wrapper (``cli`` mode: the same
``patchbay.cli.main`` in this interpreter, with ``CrmClient.upload`` wrapped to take the readings
at its start and end); the ``process`` way runs ``.venv/bin/patchbay`` itself, unwrapped.

The emulator is ``ZohoEmulator`` with its refresh limit (10 per 10 minutes), its access-token
cap (10) and the v1 upload rule (60 a minute) raised or switched off: every process here
refreshes a token of its own. Every upload is checked afterwards by the parent: the record's
attachment list must hold exactly the id the client returned with the file's size, the
content downloaded must have the file's SHA-256; then it is deleted (the emulator keeps
contents in memory). Each run uses a record id of its own. The checks run in a process of
their own too (``verify`` mode): this one stays small, since its RSS is the children's floor.

One JSON line per process goes to ``bench/results/crm-<date>.jsonl``; medians over repeats and
the Patchbay/SDK ratios are printed at the end. Target (the issue): the file adds less than a
quarter of what it adds in the SDK (the reference measured 42.6 MiB for the SDK).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
BIG = 20_971_520  # 20 MB as Zoho counts it (20 MiB): the emulator's and Patchbay's limit
SMALL = 1024
RECORD_BASE = 5_725_767_000_000_200_000
MODULE = "Leads"
CLIENTS = ("patchbay", "sdk", "cli")
MIB = 1024 * 1024
ENV_KEYS = ("PB_CRM_BASE", "PB_CRM_CLIENT_ID", "PB_CRM_CLIENT_SECRET", "PB_CRM_REFRESH_TOKEN")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# In the measured processes


def status_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process, KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


class Probe:
    """The readings around one upload: ``before()`` right before it, ``after()`` right after."""

    def __init__(self, measure: str) -> None:
        self.measure = measure
        self.explain = measure == "explain"  # trace, plus where the memory went (by hand)
        if self.explain:
            self.measure = "trace"
        self.report: dict[str, Any] = {"measure": measure}
        self.snapshot: tracemalloc.Snapshot | None = None
        self.modules: set[str] = set()

    def before(self) -> None:
        r = self.report
        if self.measure == "process":  # nothing read, nothing reset: the parent reads wait4
            r["t_before"] = time.monotonic()
            return
        gc.collect()
        if self.measure == "trace":
            if self.explain:
                self.snapshot = tracemalloc.take_snapshot()
                self.modules = set(sys.modules)
            current, peak = tracemalloc.get_traced_memory()
            r["traced_before"] = current
            r["traced_setup_peak"] = peak
            tracemalloc.reset_peak()
        else:
            st = status_kib()
            r["rss_before_kib"] = st["VmRSS"]
            r["hwm_setup_kib"] = st["VmHWM"]
            r["maxrss_setup_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                r["hwm_reset"] = status_kib()["VmHWM"] <= st["VmRSS"] + 64
            except OSError as exc:
                r["hwm_reset"] = False
                r["hwm_reset_error"] = str(exc)
        r["t_before"] = time.monotonic()

    def after(self) -> None:
        r = self.report
        r["upload_s"] = round(time.monotonic() - r.pop("t_before"), 3)
        if self.measure == "process":
            return
        if self.measure == "trace":
            current, peak = tracemalloc.get_traced_memory()
            r["traced_upload_peak"] = peak
            r["traced_after"] = current
            r["adds_bytes"] = peak - r["traced_before"]
            if self.snapshot is not None:  # what stayed allocated after the upload, by file
                diff = tracemalloc.take_snapshot().compare_to(self.snapshot, "filename")
                r["kept_by_file"] = [[str(d.traceback[0].filename), d.size_diff] for d in diff[:15]]
                r["modules_imported"] = sorted(set(sys.modules) - self.modules)
        else:
            st = status_kib()
            r["hwm_upload_kib"] = st["VmHWM"]
            r["rss_after_kib"] = st["VmRSS"]
            r["maxrss_upload_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if r["hwm_reset"]:
                r["adds_bytes"] = (st["VmHWM"] - r["rss_before_kib"]) * 1024


def creds() -> dict[str, str]:
    return {k: os.environ[k] for k in ENV_KEYS}


async def patchbay_upload(
    path: str, record: str, probe: Probe | None, warm: tuple[str, str] | None
) -> dict[str, Any]:
    from patchbay.crm.client import CrmClient
    from patchbay.settings import CrmSettings

    c = creds()
    settings = CrmSettings(
        client_id=c["PB_CRM_CLIENT_ID"],
        client_secret=c["PB_CRM_CLIENT_SECRET"],
        refresh_token=c["PB_CRM_REFRESH_TOKEN"],
        accounts_url=c["PB_CRM_BASE"],
        api_url=c["PB_CRM_BASE"],
    )
    out: dict[str, Any] = {}
    async with CrmClient(settings, store=None) as client:
        if probe is None:  # "none": everything but the upload
            return out
        if warm is not None:  # "warm": one small upload first, not measured
            out["warm_attachment_id"] = (await client.upload(MODULE, warm[1], warm[0])).id
        probe.before()
        attachment = await client.upload(MODULE, record, path)
        probe.after()
    return out | {"attachment_id": attachment.id, "reported_size": attachment.size}


def sdk_upload(
    path: str, record: str, probe: Probe | None, warm: tuple[str, str] | None, workdir: str
) -> dict[str, Any]:
    from zohocrmsdk.src.com.zoho.api.authenticator.oauth_token import OAuthToken
    from zohocrmsdk.src.com.zoho.api.authenticator.store.file_store import FileStore
    from zohocrmsdk.src.com.zoho.crm.api.attachments import (
        ActionWrapper,
        AttachmentsOperations,
        FileBodyWrapper,
        SuccessResponse,
    )
    from zohocrmsdk.src.com.zoho.crm.api.dc.data_center import DataCenter
    from zohocrmsdk.src.com.zoho.crm.api.initializer import Initializer
    from zohocrmsdk.src.com.zoho.crm.api.sdk_config import SDKConfig
    from zohocrmsdk.src.com.zoho.crm.api.util import StreamWrapper

    c = creds()
    base = c["PB_CRM_BASE"]
    Initializer.initialize(
        environment=DataCenter.Environment(base, f"{base}/oauth/v2/token", base),
        token=OAuthToken(
            client_id=c["PB_CRM_CLIENT_ID"],
            client_secret=c["PB_CRM_CLIENT_SECRET"],
            refresh_token=c["PB_CRM_REFRESH_TOKEN"],
            find_user=False,  # else it looks its user up with /crm/v8/users (not emulated)
        ),
        store=FileStore(os.path.join(workdir, "sdk_tokens.csv")),
        sdk_config=SDKConfig(auto_refresh_fields=False, pick_list_validation=False),
        resource_path=workdir,
    )
    operations = AttachmentsOperations()

    def upload(path: str, record: str) -> Any:
        with open(path, "rb") as stream:  # as the SDK's documentation and the tests do
            body = FileBodyWrapper()
            body.set_file(StreamWrapper(name=os.path.basename(path), stream=stream))
            return operations.upload_attachments(int(record), MODULE, body)

    def created(response: Any) -> str | None:
        result = response.get_object()
        if isinstance(result, ActionWrapper):
            (item,) = result.get_data()
            if isinstance(item, SuccessResponse):
                return str(item.get_details()["id"])
        return None

    out: dict[str, Any] = {}
    if probe is None:
        return out
    if warm is not None:
        out["warm_attachment_id"] = created(upload(warm[0], warm[1]))
    probe.before()
    response = upload(path, record)
    probe.after()
    return out | {"http_status": response.get_status_code(), "attachment_id": created(response)}


def child_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="crm_memory.py child")
    p.add_argument("--client", choices=("patchbay", "sdk"), required=True)
    p.add_argument("--measure", choices=("rss", "trace", "explain", "process"), required=True)
    p.add_argument("--file", help="the file to upload (none: set up only)")
    p.add_argument("--record", required=True)
    p.add_argument("--warm-file", help="upload this first (not measured), to --warm-record")
    p.add_argument("--warm-record")
    a = p.parse_args(argv)
    warm = (a.warm_file, a.warm_record) if a.warm_file else None
    if a.measure in ("trace", "explain"):
        tracemalloc.start()  # before the client's imports
    probe = Probe(a.measure) if a.file else None  # None: everything but the upload
    if a.client == "patchbay":
        import asyncio

        out = asyncio.run(patchbay_upload(a.file, a.record, probe, warm))
    else:
        out = sdk_upload(a.file, a.record, probe, warm, os.getcwd())
    if probe is not None:
        out.update(probe.report)
    st = status_kib()
    out["end_rss_kib"], out["end_hwm_kib"] = st["VmRSS"], st["VmHWM"]
    if a.measure in ("trace", "explain"):
        out["traced_end_peak"] = tracemalloc.get_traced_memory()[1]
    print(json.dumps(out), flush=True)


def cli_main(argv: list[str]) -> None:
    """``patchbay`` itself, in this interpreter, with the readings taken around its upload."""
    measure, report_path, args = argv[0], argv[1], argv[2:]
    if measure in ("trace", "explain"):
        tracemalloc.start()
    probe = Probe(measure)
    from patchbay.cli import main
    from patchbay.crm.client import CrmClient

    upload = CrmClient.upload

    async def measured(self: Any, *pos: Any, **kw: Any) -> Any:
        probe.before()
        try:
            return await upload(self, *pos, **kw)
        finally:
            probe.after()

    CrmClient.upload = measured  # type: ignore[method-assign]
    code: Any = 0
    try:
        main(args=args, prog_name="patchbay")
    except SystemExit as exc:
        code = exc.code
    st = status_kib()
    probe.report.update(end_rss_kib=st["VmRSS"], end_hwm_kib=st["VmHWM"], exit=code)
    Path(report_path).write_text(json.dumps(probe.report))
    sys.exit(code)


def emulator_main(argv: list[str]) -> None:
    from patchbay.emulators.serve import base_url, listen, run
    from patchbay.emulators.zoho import ZohoEmulator

    sock = listen("127.0.0.1", 0)
    url = base_url(sock)
    emulator = ZohoEmulator(
        api_domain=url,
        refresh_limit=1_000_000,  # every measured process refreshes a token of its own
        max_access_tokens=1_000_000,
        upload_limit=None,  # the v1 rule (60 uploads a minute) off: 50+ uploads in minutes
    )
    print(
        json.dumps(
            {
                "PB_CRM_BASE": url,
                "PB_CRM_CLIENT_ID": emulator.client_id,
                "PB_CRM_CLIENT_SECRET": emulator.client_secret,
                "PB_CRM_REFRESH_TOKEN": emulator.refresh_token,
                "max_upload_bytes": emulator.max_upload_bytes,
            }
        ),
        flush=True,
    )
    run(emulator, sock=sock)


# --------------------------------------------------------------------------------------------
# The parent


class Emulator:
    def __init__(self, workdir: Path) -> None:
        self.log = open(workdir / "emulator.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "emulator"],
            stdout=subprocess.PIPE,
            stderr=self.log,
            cwd=workdir,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the emulator did not start: see {workdir / 'emulator.log'}")
        self.info = json.loads(line)
        self.env = {k: self.info[k] for k in ENV_KEYS}
        self.base = self.info["PB_CRM_BASE"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()

    def verify(self, record: str, attachment_id: str | None, size: int, sha256: str) -> str | None:
        """None when the record holds exactly that attachment with that content; else why not.

        Done by a process of its own (``verify`` mode), so that this one stays small: its RSS
        is the floor of every child's ``ru_maxrss`` (see ``reset_own_hwm``).
        """
        cmd = [sys.executable, str(Path(__file__).resolve()), "verify", record]
        cmd += [attachment_id or "-", str(size), sha256]
        done = subprocess.run(
            cmd, env=clean_env(self.env), capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            return f"verify failed: {done.stderr.strip()[-500:]}"
        problem: str | None = json.loads(done.stdout)["problem"]
        return problem


def verify_main(argv: list[str]) -> None:
    """List the record's attachments, download the one there, compare; delete them all."""
    import hashlib

    import httpx

    record, attachment_id, size, sha256 = argv
    c = creds()

    def check(http: httpx.Client, headers: dict[str, str]) -> str | None:
        path = f"/crm/v8/{MODULE}/{record}/Attachments"
        listed = http.get(path, params={"fields": "id,File_Name,Size"}, headers=headers)
        entries = listed.json().get("data", []) if listed.status_code == 200 else []
        try:
            if not entries:
                return f"the record has no attachment (list: HTTP {listed.status_code})"
            if len(entries) != 1:
                return f"the record has {len(entries)} attachments"
            (entry,) = entries
            if str(entry["id"]) != attachment_id:
                return f"listed id {entry['id']} is not the returned {attachment_id}"
            if str(entry.get("Size")) != size:
                return f"listed size {entry.get('Size')} is not {size}"
            digest = hashlib.sha256()
            with http.stream("GET", f"{path}/{entry['id']}", headers=headers) as r:
                if r.status_code != 200:
                    return f"download: HTTP {r.status_code}"
                for chunk in r.iter_bytes():
                    digest.update(chunk)
            if digest.hexdigest() != sha256:
                return "downloaded content differs from the file"
            return None
        finally:  # the emulator keeps contents in memory
            for e in entries:
                http.delete(f"{path}/{e['id']}", headers=headers)

    with httpx.Client(base_url=c["PB_CRM_BASE"], timeout=60) as http:
        token = http.post(
            "/oauth/v2/token",
            data={
                "grant_type": "refresh_token",
                "client_id": c["PB_CRM_CLIENT_ID"],
                "client_secret": c["PB_CRM_CLIENT_SECRET"],
                "refresh_token": c["PB_CRM_REFRESH_TOKEN"],
            },
        ).json()["access_token"]
        problem = check(http, {"authorization": f"Zoho-oauthtoken {token}"})
    print(json.dumps({"problem": problem}))


def run_measured(
    cmd: list[str], env: dict[str, str], cwd: Path, timeout: float
) -> tuple[int, str, str, int, float]:
    """Run ``cmd``, reaped with wait4: exit status, stdout, stderr, ru_maxrss (KiB), seconds."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, out.read(), err.read(), usage.ru_maxrss, time.monotonic() - t0


def readings(
    rec: dict[str, Any], client: str, measure: str, variant: str, out: str, workdir: Path
) -> None:
    """Add what one measured process reported (its JSON, the CLI's report or output) to ``rec``."""
    lines = out.strip().splitlines()
    if client != "cli":
        rec.update(json.loads(lines[-1]))
    elif measure != "process":
        report = workdir / "cli-report.json"
        try:
            rec.update(json.loads(report.read_text()))
        finally:
            report.unlink(missing_ok=True)
        rec["attachment_id"] = lines[-1] if lines else None
    elif variant != "none":
        rec["attachment_id"] = lines[-1] if lines else None
    else:
        rec["list_output"] = out.strip()


def reset_own_hwm() -> int | None:
    """Reset this process's RSS high-water mark; its RSS now (KiB), None if it cannot.

    A child started by subprocess (vfork, then exec) begins with ``ru_maxrss`` at this
    process's high-water mark: the kernel carries the old address space's peak into the new
    program's ``maxrss`` at exec. Resetting it before each start makes that floor this
    process's current RSS, far below any measured client's own peak (checked per run).
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return status_kib()["VmHWM"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHONTRACEMALLOC", "PYTHONMALLOC", "PYTHONDEVMODE", "PB_CRM_"))
    }
    env.update(extra)
    return env


def cli_config(workdir: Path, emulator: Emulator) -> Path:
    state = workdir / "state"
    state.mkdir(exist_ok=True)
    config = workdir / "patchbay.toml"
    info = emulator.info
    config.write_text(
        "[server]\n"
        f'state_dir = "{state}"\n\n'
        "[crm]\n"
        f'client_id = "{info["PB_CRM_CLIENT_ID"]}"\n'
        f'client_secret = "{info["PB_CRM_CLIENT_SECRET"]}"\n'
        f'refresh_token = "{info["PB_CRM_REFRESH_TOKEN"]}"\n'
        f'accounts_url = "{emulator.base}"\n'
        f'api_url = "{emulator.base}"\n'
    )
    return config


def command_for(
    client: str,
    measure: str,
    variant: str,
    files: dict[str, Path],
    record: str,
    ctx: dict[str, Any],
) -> tuple[list[str], str]:
    """The argv of one measured process and how it is shown in the record."""
    py = sys.executable
    script = str(Path(__file__).resolve())
    if client in ("patchbay", "sdk"):
        cmd = [py, script, "child", "--client", client, "--measure", measure, "--record", record]
        if variant == "warm":
            cmd += ["--file", str(files["big"]), "--warm-file", str(files["small"])]
            cmd += ["--warm-record", warm_record(record)]
        elif variant != "none":
            cmd += ["--file", str(files[variant])]
    elif measure == "process":
        patchbay = str(Path(sys.executable).parent / "patchbay")
        if variant == "none":
            cmd = [patchbay, "crm", "list", "--config", str(ctx["config"]), MODULE, record]
        else:
            cmd = [patchbay, "crm", "attach", "--config", str(ctx["config"]), MODULE, record]
            cmd.append(str(files[variant]))
    else:
        report = str(ctx["workdir"] / "cli-report.json")
        cmd = [py, script, "cli", measure, report, "crm", "attach", "--config"]
        cmd += [str(ctx["config"]), MODULE, record, str(files[variant])]
    shown = " ".join(cmd).replace(str(ROOT) + "/", "")
    return cmd, shown


def warm_record(record: str) -> str:
    return str(int(record) + 500_000)


def plan(clients: list[str], explain: bool) -> list[tuple[str, str, str]]:
    """(client, measure, variant) of one repeat."""
    if explain:  # tracemalloc snapshots around the upload: where the memory went
        return [(c, "explain", v) for c in clients for v in ("big", "small")]
    steps = []
    for client in clients:
        for measure in ("rss", "trace"):
            # warm: the 20 MB upload after a 1 KiB one in the same process (not for the CLI,
            # which makes one upload per process)
            variants = ("big", "small") if client == "cli" else ("big", "small", "warm")
            for variant in variants:
                steps.append((client, measure, variant))
        for variant in ("big", "small", "none"):
            steps.append((client, "process", variant))
    return steps


def shown_path(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    p = Path(path)
    return p.relative_to(ROOT).as_posix() if p.is_relative_to(ROOT) else str(p)


def fmt_mib(b: float | None) -> str:
    return "-" if b is None else f"{b / MIB:.2f}"


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(records: list[dict[str, Any]], clients: list[str]) -> dict[str, Any]:
    """What the upload adds, per client and way of measuring: one value per repeat."""

    def pick(client: str, measure: str, variant: str, key: str) -> dict[int, float]:
        return {
            r["repeat"]: r[key]
            for r in records
            if r["client"] == client
            and r["measure"] == measure
            and r["variant"] == variant
            and r.get("valid")
            and r.get(key) is not None
        }

    def paired(x: dict[int, float], y: dict[int, float], scale: float = 1.0) -> list[float]:
        return [(x[k] - y[k]) * scale for k in sorted(x) if k in y]

    table: dict[str, Any] = {}
    for client in clients:
        row: dict[str, Any] = {}
        for measure in ("rss", "trace"):
            big = pick(client, measure, "big", "adds_bytes")
            small = pick(client, measure, "small", "adds_bytes")
            row[measure] = list(big.values())
            row[f"{measure}_small"] = list(small.values())
            row[f"{measure}_marginal"] = paired(big, small)
            row[f"{measure}_warm"] = list(pick(client, measure, "warm", "adds_bytes").values())
        big = pick(client, "process", "big", "maxrss_kib")
        small = pick(client, "process", "small", "maxrss_kib")
        none = pick(client, "process", "none", "maxrss_kib")
        row["process_big_kib"] = list(big.values())
        row["process_small_kib"] = list(small.values())
        row["process_none_kib"] = list(none.values())
        row["process_vs_small"] = paired(big, small, 1024)
        row["process_vs_none"] = paired(big, none, 1024)
        table[client] = row
    return table


WAYS = (
    ("rss", "RSS: VmHWM during upload - VmRSS before (clear_refs)"),
    ("trace", "tracemalloc: peak during upload - traced before"),
    ("process_vs_none", "ru_maxrss: 20 MB process - no-upload process"),
    ("process_vs_small", "ru_maxrss: 20 MB process - 1 KiB process"),
    ("rss_small", "RSS, 1 KiB file instead"),
    ("trace_small", "tracemalloc, 1 KiB file instead"),
    ("rss_marginal", "RSS: 20 MB run - 1 KiB run (paired by repeat)"),
    ("trace_marginal", "tracemalloc: 20 MB run - 1 KiB run (paired)"),
    ("rss_warm", "RSS, 20 MB after a 1 KiB upload, same process"),
    ("trace_warm", "tracemalloc, 20 MB after a 1 KiB upload"),
)


def print_summary(table: dict[str, Any], clients: list[str]) -> None:
    print()
    print("What the upload adds, MiB: median (min..max) over repeats; [x] = median / SDK median")
    width = 30
    print(f"{'way':<52}" + "".join(f"{c:>{width}}" for c in clients))
    for key, label in WAYS:
        cells = []
        sdk = med(table.get("sdk", {}).get(key, []))
        for client in clients:
            values = table[client][key]
            m = med(values)
            if m is None:
                cells.append(f"{'-':>{width}}")
                continue
            cell = f"{fmt_mib(m)} ({fmt_mib(min(values))}..{fmt_mib(max(values))})"
            if client != "sdk" and sdk and sdk > 0:
                cell += f" [{m / sdk:.3f}]"
            cells.append(f"{cell:>{width}}")
        print(f"{label:<52}" + "".join(cells))
    print()
    print("Whole-process peak (ru_maxrss), MiB, median: 20 MB / 1 KiB / no upload")
    for client in clients:
        row = table[client]
        parts = [
            fmt_mib(med(row[k]) * 1024 if row[k] else None)
            for k in ("process_big_kib", "process_small_kib", "process_none_kib")
        ]
        print(f"  {client:<10} {' / '.join(parts)}")


def print_explained(records: list[dict[str, Any]]) -> None:
    for r in records:
        print(
            f"\n{r['client']} {r['variant']}: traced peak during upload - before "
            f"{fmt_mib(r.get('adds_bytes'))} MiB, still allocated after "
            f"{fmt_mib(r.get('traced_after', 0) - r.get('traced_before', 0))} MiB; by file:"
        )
        for name, size in r.get("kept_by_file", [])[:10]:
            print(f"  {size / 1024:+9.1f} KiB  {shown_path(name)}")
        print(f"  modules imported during the upload: {' '.join(r.get('modules_imported', []))}")


def versions() -> dict[str, Any]:
    import importlib.metadata as md

    out: dict[str, Any] = {
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
    }
    packages = {}
    for name in ("patchbay", "zohocrmsdk8-0", "requests", "urllib3", "httpx", "httpcore"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            packages[name] = None
    out["packages"] = packages
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--size", type=int, default=BIG, help="bytes of the big file")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds per process")
    p.add_argument("--label", default="")
    p.add_argument("--out", help="default: bench/results/crm-<date>.jsonl")
    p.add_argument(
        "--explain",
        action="store_true",
        help="instead: tracemalloc snapshots before and after each upload (what stayed "
        "allocated, by file; modules imported during the upload); figures not comparable",
    )
    a = p.parse_args()
    clients = [c for c in a.clients.split(",") if c]
    if set(clients) - set(CLIENTS):
        p.error(f"--clients: one of {CLIENTS}")
    import datetime as dt
    import hashlib

    from run import append_record

    RESULTS.mkdir(exist_ok=True)
    out_path = Path(a.out) if a.out else RESULTS / f"crm-{dt.date.today().isoformat()}.jsonl"
    session = {
        "session": dt.datetime.now().isoformat(timespec="seconds"),
        "label": a.label,
        "kind": "crm-memory",
        "host": platform.node(),
        "command": " ".join([shown_path(sys.executable), *sys.argv]),
    }
    info = versions()
    log(f"versions: {json.dumps(info)}")
    failures = 0
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="patchbay-crm-mem-") as tmp:
        workdir = Path(tmp)
        files = {"big": workdir / "big.bin", "small": workdir / "small.bin"}
        sizes = {"big": a.size, "small": SMALL}
        digests = {}
        for variant, path in files.items():  # in 1 MiB pieces: this process stays small
            digest = hashlib.sha256()
            with open(path, "wb") as f:
                left = sizes[variant]
                while left:
                    piece = os.urandom(min(MIB, left))
                    digest.update(piece)
                    f.write(piece)
                    left -= len(piece)
            digests[variant] = digest.hexdigest()
        emulator = Emulator(workdir)
        log(f"emulator at {emulator.base} (max_upload_bytes {emulator.info['max_upload_bytes']})")
        ctx = {"workdir": workdir, "config": cli_config(workdir, emulator)}
        env = clean_env(emulator.env)
        counter = 0
        try:
            for repeat in range(1, a.repeat + 1):
                for client, measure, variant in plan(clients, a.explain):
                    counter += 1
                    record = str(RECORD_BASE + counter)
                    cmd, shown = command_for(client, measure, variant, files, record, ctx)
                    run_dir = workdir / f"run{counter}"
                    run_dir.mkdir()
                    floor = reset_own_hwm()
                    code, out, err, maxrss, secs = run_measured(cmd, env, run_dir, a.timeout)
                    rec: dict[str, Any] = {
                        "client": client,
                        "measure": measure,
                        "variant": variant,
                        "repeat": repeat,
                        "file_bytes": sizes["big"] if variant == "warm" else sizes.get(variant, 0),
                        "record_id": record,
                        "cmd": shown,
                        "exit": code,
                        "maxrss_kib": maxrss,
                        "parent_rss_kib": floor,
                        "wall_s": round(secs, 3),
                    }
                    problem = None
                    try:
                        readings(rec, client, measure, variant, out, ctx["workdir"])
                    except (OSError, ValueError, IndexError) as exc:
                        problem = f"no readings ({exc!r}): {err.strip()[-800:]}"
                    if code != 0:
                        problem = f"exit {code}: {err.strip()[-800:]}"
                    if problem is None and variant == "warm":
                        problem = emulator.verify(
                            warm_record(record),
                            rec.get("warm_attachment_id"),
                            sizes["small"],
                            digests["small"],
                        )
                        if problem:
                            problem = f"warm-up upload: {problem}"
                    if problem is None and variant != "none":
                        size_of = "big" if variant == "warm" else variant
                        problem = emulator.verify(
                            record, rec.get("attachment_id"), sizes[size_of], digests[size_of]
                        )
                        rec["verified"] = problem is None
                    if problem is None and floor is None:
                        problem = "this process's VmHWM could not be reset: ru_maxrss unusable"
                    elif problem is None and maxrss <= floor:
                        problem = f"ru_maxrss {maxrss} KiB is only this process's RSS {floor} KiB"
                    if problem is None and measure == "rss" and not rec.get("hwm_reset"):
                        problem = f"VmHWM could not be reset: {rec.get('hwm_reset_error')}"
                    rec["valid"] = problem is None
                    if problem:
                        rec["problem"] = problem
                        failures += 1
                    rec = append_record(out_path, records, session, info, rec)
                    adds = rec.get("adds_bytes")
                    log(
                        f"r{repeat} {client:<8} {measure:<7} {variant:<5} "
                        f"maxrss {maxrss / 1024:7.1f} MiB"
                        + (f"  adds {fmt_mib(adds)} MiB" if adds is not None else "")
                        + f"  {secs:5.1f} s"
                        + ("" if problem is None else f"  INVALID: {problem[:300]}")
                    )
        finally:
            emulator.stop()
    if a.explain:
        print_explained(records)
    else:
        print_summary(summarize(records, clients), clients)
    print(f"\nrecords: {out_path.relative_to(ROOT) if out_path.is_relative_to(ROOT) else out_path}")
    print(f"invalid runs: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "cli":
        cli_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "verify":
        verify_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "emulator":
        emulator_main(sys.argv[2:])
    else:
        sys.exit(main())
