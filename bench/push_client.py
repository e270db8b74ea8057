#!/usr/bin/env python3
"""One FCM client sending one notification to every token of a file: run by ``push.py``.

Each client runs in a process of its own (so that its memory is its own), against an FCM
emulator at ``--url`` whose token endpoint is the service account's ``token_uri``::

    push_client.py CLIENT --url http://127.0.0.1:PORT --sa sa.json --tokens FILE \
        [--concurrency 100] [--http 2|1]

Clients (``--http 2`` = h2c, HTTP/2 with prior knowledge, ``--http 1`` = HTTP/1.1):

- ``bare``: the HTTP/2 ceiling (``push.py`` takes the faster bare client of each protocol as
  its ceiling). One ``httpx.AsyncClient`` (h2c: ``http1=False, http2=True``; HTTP/1.1:
  a pool of ``concurrency`` keep-alive connections), a bearer token obtained once,
  ``concurrency`` coroutines each taking the next token and posting the v1 JSON; only the status
  is looked at.
- ``bare-aiohttp``: the same with aiohttp (HTTP/1.1 only; one ``ClientSession``, a connector of
  ``concurrency`` keep-alive connections): the HTTP/1.1 ceiling in practice, a client whose
  HTTP parser is in C and whose pool does not scan its connections.
- ``patchbay``: ``patchbay.push.Sender`` (async), ``send_multicast(template, tokens)``, as
  shipped: ``[push] http2`` chooses its transport (``--http 2``: httpx over h2c; ``--http 1``:
  aiohttp over HTTP/1.1, see ``src/patchbay/push/transport.py``).
- ``patchbay-blocking``: ``patchbay.push.connect(...)`` (the ``BlockingSender``),
  ``send_multicast``: what a script or a WSGI app uses.
- ``admin-async``: firebase-admin ``messaging.send_each_async``, batches of 500 (its limit) one
  after the other. Its httpx transport speaks HTTP/1.1 to an ``http://`` URL (no ALPN); with
  ``--http 2`` the transport it wraps is replaced by an h2c one (what it speaks to FCM over TLS).
- ``admin-sync``: firebase-admin ``messaging.send_each``, batches of 500 (one thread per
  message, requests: HTTP/1.1 only); the session gets the adapter firebase-admin mounts for
  ``https://fcm.googleapis.com`` (a pool of 100) mounted for the emulator's URL instead.
- ``pyfcm-threads``: PyFCM ``FCMNotification.notify(fcm_token=...)``, one message per call,
  from ``concurrency`` threads (PyFCM keeps one requests session per thread): HTTP/1.1 only.
- ``pyfcm-async``: PyFCM ``async_notify_multiple_devices``, batches of 500 (aiohttp, one
  session and connection per message): HTTP/1.1 only.

The tokens are read from the file line by line as the client asks for them (firebase-admin and
PyFCM async take lists: 500 at a time). Before the measured part every client makes its set-up
and one unmeasured send (target ``warmup-...``), so that the access token is fetched and, where
the library keeps them, connections are open; PyFCM threads each make one. Then the peak RSS is
reset (``/proc/self/clear_refs``) and the run is timed until the last answer.

Prints one JSON object: counts (``ok``, ``failed``, first errors), ``elapsed_s``, ``msg_per_s``,
``rss_base_kib`` (RSS just before the measured part), ``rss_peak_kib`` (the peak during it),
CPU seconds of the process during it, and the library versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import resource
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITLE = "Patchbay bench"
BODY = "Your order has shipped"
DATA = {"order": "42", "kind": "shipping"}
BATCH = 500  # firebase-admin's limit per send_each / send_each_async call
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
CLIENTS = (
    "bare",
    "bare-aiohttp",
    "patchbay",
    "patchbay-blocking",
    "admin-async",
    "admin-sync",
    "pyfcm-threads",
    "pyfcm-async",
)


def read_tokens(path: str) -> Iterator[str]:
    with open(path, encoding="ascii") as f:
        for line in f:
            token = line.strip()
            if token:
                yield token


def batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


class Meter:
    """Counts, errors, and the measured window's time, CPU and memory."""

    def __init__(self) -> None:
        self.result: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        self.ok = 0
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.http_versions: Counter[str] = Counter()

    def start(self) -> None:
        status = proc_status()
        self.rss_base = status["VmRSS"]
        self.hwm_before = status["VmHWM"]
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.ru0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.t0
        ru = resource.getrusage(resource.RUSAGE_SELF)
        status = proc_status()
        total = self.ok + self.failed
        self.result = {
            "ok": self.ok,
            "failed": self.failed,
            "errors": dict(self.errors.most_common(5)),
            "http_versions": dict(self.http_versions),
            "elapsed_s": round(elapsed, 3),
            "msg_per_s": round(total / elapsed, 1) if elapsed else None,
            "ok_per_s": round(self.ok / elapsed, 1) if elapsed else None,
            "cpu_user_s": round(ru.ru_utime - self.ru0.ru_utime, 3),
            "cpu_sys_s": round(ru.ru_stime - self.ru0.ru_stime, 3),
            "cpu_us_per_msg": round(
                1e6 * (ru.ru_utime + ru.ru_stime - self.ru0.ru_utime - self.ru0.ru_stime) / total,
                1,
            )
            if total
            else None,
            "rss_base_kib": self.rss_base,
            "rss_peak_kib": status["VmHWM"] if self.hwm_reset else None,
            "rss_end_kib": status["VmRSS"],
            "rss_peak_process_kib": max(status["VmHWM"], self.hwm_before),
            "peak_minus_base_kib": status["VmHWM"] - self.rss_base if self.hwm_reset else None,
            "threads_end": status["Threads"],
            "hwm_reset": self.hwm_reset,
        }
        return self.result

    def fail(self, what: str) -> None:
        self.failed += 1
        self.errors[what[:120]] += 1


def access_token(sa: str) -> str:
    """One access token for the service account, from its token_uri (the emulator)."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    creds = service_account.Credentials.from_service_account_file(sa, scopes=[SCOPE])
    creds.refresh(google.auth.transport.requests.Request())
    return str(creds.token)


def project_of(sa: str) -> str:
    return str(json.loads(Path(sa).read_text())["project_id"])


# -- the ceiling -------------------------------------------------------------------------------


async def run_bare(a: argparse.Namespace, meter: Meter) -> None:
    import httpx
    import orjson

    url = f"{a.url}/v1/projects/{project_of(a.sa)}/messages:send"
    headers = {"authorization": f"Bearer {access_token(a.sa)}", "content-type": "application/json"}
    base = {"notification": {"title": TITLE, "body": BODY}, "data": DATA}
    if a.http == 2:
        client = httpx.AsyncClient(http1=False, http2=True, timeout=60)
    else:
        limits = httpx.Limits(
            max_connections=a.concurrency, max_keepalive_connections=a.concurrency
        )
        client = httpx.AsyncClient(http2=False, limits=limits, timeout=60)
    tokens = read_tokens(a.tokens)

    async def post(token: str) -> None:
        body = orjson.dumps({"message": {"token": token, **base}})
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            meter.fail(type(exc).__name__)
            return
        meter.http_versions[response.http_version] += 1
        if response.status_code == 200:
            meter.ok += 1
        else:
            meter.fail(f"HTTP {response.status_code}")

    async def worker() -> None:
        for token in tokens:
            await post(token)

    async with client:
        await post("warmup-bare")
        meter.reset()  # forget the warm-up
        meter.start()
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        meter.stop()


async def run_bare_aiohttp(a: argparse.Namespace, meter: Meter) -> None:
    import aiohttp
    import orjson

    url = f"{a.url}/v1/projects/{project_of(a.sa)}/messages:send"
    headers = {"authorization": f"Bearer {access_token(a.sa)}", "content-type": "application/json"}
    base = {"notification": {"title": TITLE, "body": BODY}, "data": DATA}
    connector = aiohttp.TCPConnector(limit=a.concurrency)
    tokens = read_tokens(a.tokens)

    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=60)
    ) as session:

        async def post(token: str) -> None:
            body = orjson.dumps({"message": {"token": token, **base}})
            try:
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except aiohttp.ClientError as exc:
                meter.fail(type(exc).__name__)
                return
            meter.http_versions["HTTP/1.1"] += 1
            if status == 200:
                meter.ok += 1
            else:
                meter.fail(f"HTTP {status}")

        async def worker() -> None:
            for token in tokens:
                await post(token)

        await post("warmup-bare-aiohttp")
        meter.reset()
        meter.start()
        await asyncio.gather(*(worker() for _ in range(a.concurrency)))
        meter.stop()


# -- Patchbay ----------------------------------------------------------------------------------


def patchbay_template() -> Any:
    from patchbay.push import Message, Notification

    return Message(notification=Notification(title=TITLE, body=BODY), data=DATA)


def count_patchbay(meter: Meter, result: Any) -> None:
    if result.ok:
        meter.ok += 1
    else:
        meter.fail(f"{result.outcome} {result.error_code} {result.detail}")


async def run_patchbay(a: argparse.Namespace, meter: Meter) -> None:
    from patchbay.push import Sender
    from patchbay.settings import PushSettings

    settings = PushSettings(
        service_account=a.sa, fcm_url=a.url, concurrency=a.concurrency, http2=a.http == 2
    )
    template = patchbay_template()
    async with Sender.from_settings(settings) as sender:
        warm = await sender.send(template.to(token="warmup-patchbay"))
        if not warm.ok:
            raise SystemExit(f"warm-up failed: {warm}")
        before = Counter(sender.stats.http_versions)
        meter.start()
        async for result in sender.send_multicast(template, read_tokens(a.tokens)):
            count_patchbay(meter, result)
        meter.http_versions = sender.stats.http_versions - before
        meter.stop()


def run_patchbay_blocking(a: argparse.Namespace, meter: Meter) -> None:
    from patchbay.push import connect

    template = patchbay_template()
    with connect(a.sa, fcm_url=a.url, concurrency=a.concurrency, http2=a.http == 2) as fcm:
        warm = fcm.notify("warmup-patchbay-blocking", TITLE, BODY, DATA)
        if not warm.ok:
            raise SystemExit(f"warm-up failed: {warm}")
        before = Counter(fcm.sender.stats.http_versions)
        meter.start()
        for result in fcm.send_multicast(template, read_tokens(a.tokens)):
            count_patchbay(meter, result)
        meter.http_versions = fcm.sender.stats.http_versions - before
        meter.stop()


# -- firebase-admin ----------------------------------------------------------------------------


def admin_app(a: argparse.Namespace) -> tuple[Any, Any]:
    """An app whose messaging service posts to the emulator (as the integration tests do)."""
    import firebase_admin  # type: ignore[import-untyped]
    import httpx
    import requests
    from firebase_admin import _http_client, credentials, messaging

    app = firebase_admin.initialize_app(
        credentials.Certificate(a.sa), {"httpTimeout": 60}, name=f"bench-{uuid.uuid4().hex}"
    )
    service = messaging._get_messaging_service(app)
    service._fcm_url = f"{a.url}/v1/projects/{project_of(a.sa)}/messages:send"
    # The sync client: the adapter firebase-admin mounts for https://fcm.googleapis.com (pool of
    # 100, its retry config), mounted for the emulator; without it requests' default pool of
    # 10 would drop connections.
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=100, pool_maxsize=100, max_retries=_http_client.DEFAULT_RETRY_CONFIG
    )
    service._client.session.mount(a.url, adapter)
    if a.http == 2:
        # The async client: HttpxRetryTransport wraps httpx.AsyncHTTPTransport(http2=True), which
        # negotiates h2 by ALPN over TLS but speaks HTTP/1.1 to http://. Swap the wrapped
        # transport for an h2c one (prior knowledge): the protocol it uses against FCM.
        for mount in service._async_client._mounts.values():
            mount._wrapped_transport = httpx.AsyncHTTPTransport(retries=0, http1=False, http2=True)
    return app, messaging


def admin_messages(messaging: Any, tokens: list[str]) -> list[Any]:
    notification = messaging.Notification(title=TITLE, body=BODY)
    return [messaging.Message(token=t, notification=notification, data=DATA) for t in tokens]


def count_admin(meter: Meter, response: Any) -> None:
    for r in response.responses:
        if r.success:
            meter.ok += 1
        else:
            meter.fail(f"{type(r.exception).__name__} {r.exception}")


async def run_admin_async(a: argparse.Namespace, meter: Meter) -> None:
    app, messaging = admin_app(a)
    warm = await messaging.send_each_async(admin_messages(messaging, ["warmup-admin"]), app=app)
    if warm.success_count != 1:
        raise SystemExit(f"warm-up failed: {warm.responses[0].exception}")
    meter.start()
    for batch in batches(read_tokens(a.tokens), BATCH):
        count_admin(
            meter, await messaging.send_each_async(admin_messages(messaging, batch), app=app)
        )
    meter.stop()


def run_admin_sync(a: argparse.Namespace, meter: Meter) -> None:
    app, messaging = admin_app(a)
    warm = messaging.send_each(admin_messages(messaging, ["warmup-admin"]), app=app)
    if warm.success_count != 1:
        raise SystemExit(f"warm-up failed: {warm.responses[0].exception}")
    meter.start()
    for batch in batches(read_tokens(a.tokens), BATCH):
        count_admin(meter, messaging.send_each(admin_messages(messaging, batch), app=app))
    meter.stop()


# -- PyFCM -------------------------------------------------------------------------------------


def pyfcm_client(a: argparse.Namespace) -> Any:
    from pyfcm import FCMNotification

    fcm = FCMNotification(service_account_file=a.sa, project_id=project_of(a.sa))
    # PyFCM builds its URL from the class attribute FCM_END_POINT_BASE (and caches it).
    fcm._fcm_end_point = f"{a.url}/v1/projects/{project_of(a.sa)}/messages:send"
    return fcm


def run_pyfcm_threads(a: argparse.Namespace, meter: Meter) -> None:
    from pyfcm.errors import FCMError

    fcm = pyfcm_client(a)
    lock = threading.Lock()
    tokens = read_tokens(a.tokens)
    ready = threading.Barrier(a.concurrency + 1, timeout=120)
    go = threading.Event()

    def notify(token: str) -> None:
        try:
            fcm.notify(
                fcm_token=token,
                notification_title=TITLE,
                notification_body=BODY,
                data_payload=DATA,
                timeout=60,
            )
        except (FCMError, OSError) as exc:
            with lock:
                meter.fail(f"{type(exc).__name__} {exc}")
            return
        with lock:
            meter.ok += 1

    def worker(n: int) -> None:
        notify(f"warmup-pyfcm-{n}")  # each thread: its session and its access token
        ready.wait()
        go.wait()
        while True:
            with lock:
                token = next(tokens, None)
            if token is None:
                return
            notify(token)

    # PyFCM creates its credentials lazily, unguarded: threads that make their first call at
    # the same time replace each other's credentials and one of them sends "Bearer None"
    # (TypeError). One call from this thread first, as a threaded PyFCM user must.
    notify("warmup-pyfcm-main")
    if meter.failed:
        raise SystemExit(f"warm-up failed: {dict(meter.errors)}")
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(a.concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    if meter.failed:
        go.set()
        raise SystemExit(f"warm-up failed: {dict(meter.errors)}")
    meter.reset()  # forget the warm-ups
    meter.start()
    go.set()
    for t in threads:
        t.join()
    meter.stop()


def run_pyfcm_async(a: argparse.Namespace, meter: Meter) -> None:
    fcm = pyfcm_client(a)

    def params(token: str) -> dict[str, Any]:
        return {
            "fcm_token": token,
            "notification_title": TITLE,
            "notification_body": BODY,
            "data_payload": DATA,
        }

    warm = fcm.async_notify_multiple_devices([params("warmup-pyfcm-async")], timeout=60)
    if "name" not in warm[0]:
        raise SystemExit(f"warm-up failed: {warm[0]}")
    meter.start()
    for batch in batches(read_tokens(a.tokens), BATCH):
        try:
            answers = fcm.async_notify_multiple_devices([params(t) for t in batch], timeout=60)
        except Exception as exc:  # aiohttp errors end the whole gather
            for _ in batch:
                meter.fail(f"{type(exc).__name__} {exc}")
            continue
        for answer in answers:
            if isinstance(answer, dict) and "name" in answer:
                meter.ok += 1
            else:
                meter.fail(json.dumps(answer)[:120])
    meter.stop()


# ----------------------------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in (
        "patchbay",
        "firebase-admin",
        "pyfcm",
        "httpx",
        "httpcore",
        "h2",
        "requests",
        "urllib3",
        "aiohttp",
        "google-auth",
        "orjson",
    ):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[name] = importlib.metadata.version(name)
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("client", choices=CLIENTS)
    p.add_argument("--url", required=True, help="the emulator's base URL")
    p.add_argument("--sa", required=True, help="service-account JSON (token_uri: the emulator)")
    p.add_argument("--tokens", required=True, help="file of registration tokens, one a line")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--http", type=int, choices=(1, 2), default=2)
    a = p.parse_args()
    http11_only = ("bare-aiohttp", "admin-sync", "pyfcm-threads", "pyfcm-async")
    if a.http == 2 and a.client in http11_only:
        p.error(f"{a.client} speaks HTTP/1.1 only (requests / aiohttp)")
    meter = Meter()
    started = time.perf_counter()
    runner = {
        "bare": run_bare,
        "bare-aiohttp": run_bare_aiohttp,
        "patchbay": run_patchbay,
        "patchbay-blocking": run_patchbay_blocking,
        "admin-async": run_admin_async,
        "admin-sync": run_admin_sync,
        "pyfcm-threads": run_pyfcm_threads,
        "pyfcm-async": run_pyfcm_async,
    }[a.client]
    if asyncio.iscoroutinefunction(runner):
        asyncio.run(runner(a, meter))
    else:
        runner(a, meter)
    out = meter.result if meter.result is not None else meter.stop()
    out.update(
        client=a.client,
        http=a.http,
        concurrency=a.concurrency,
        wall_s=round(time.perf_counter() - started, 3),
        versions=versions(),
        pid=os.getpid(),
    )
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
