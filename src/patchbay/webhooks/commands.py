"""``patchbay hooks ...``: send signed test deliveries, and operate the inbox's handler runs.

``send`` needs only a URL. The other commands open the job store named by the settings
(``--config``, the environment), the same one the server uses, so they work while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx
import orjson

from patchbay import settings as settings_module
from patchbay.errors import ConfigError, PatchbayError
from patchbay.jobs.model import Job, Selection, Status
from patchbay.jobs.store import Store, connect
from patchbay.webhooks.inbox import QUEUE, STREAM_PREFIX
from patchbay.webhooks.testing import signed_request

_T = TypeVar("_T")
PROVIDERS = ("github", "standard", "svix", "stripe", "slack", "shopify", "zoho", "hmac")
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
CONTEXT = {"help_option_names": ["--help"]}


@click.group(context_settings=CONTEXT)
def hooks() -> None:
    """Webhooks: send signed test deliveries; list, replay and drop handler runs; purge."""


@hooks.command(context_settings=CONTEXT)
@click.option("--provider", type=click.Choice(PROVIDERS), required=True)
@click.option("--secret", required=True, help="Signing secret (Zoho: the channel token).")
@click.option(
    "--event", help="The provider's event header (X-GitHub-Event, Shopify's topic), if it has one."
)
@click.option("--delivery", help="Delivery id (default: a new random one).")
@click.option("--form", is_flag=True, help="Send form-encoded (payload=...), as GitHub can.")
@click.argument("payload_file", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.argument("url")
def send(
    provider: str,
    secret: str,
    event: str | None,
    delivery: str | None,
    form: bool,
    payload_file: str,
    url: str,
) -> None:
    """Sign PAYLOAD_FILE as PROVIDER would and POST it to URL; print the answer."""
    payload = sys.stdin.buffer.read() if payload_file == "-" else Path(payload_file).read_bytes()
    try:
        request = signed_request(
            provider,  # type: ignore[arg-type]
            secret,
            payload,
            event=event,
            delivery_id=delivery,
            content_type="application/x-www-form-urlencoded" if form else "application/json",
        )
    except PatchbayError as exc:
        raise click.ClickException(exc.message) from exc
    try:
        response = httpx.post(url, content=request.body, headers=request.headers, timeout=30)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot post to {url}: {exc}") from exc
    click.echo(f"{response.status_code} {response.reason_phrase}")
    click.echo(response.text)
    if not response.is_success:
        sys.exit(1)


def _config_option(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file."
    )(function)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the filter options of a command select."""

    source: str | None = None
    delivery: str | None = None
    handler: str | None = None
    since: str | None = None
    until: str | None = None

    def selection(self, runs: Sequence[int] = (), statuses: Sequence[str] = ()) -> Selection:
        """The job selection these filters, run ids and statuses make."""
        if self.delivery and not self.source:
            raise click.UsageError("--delivery needs --source")
        now = time.time()
        return Selection(
            queue=QUEUE,
            job_ids=tuple(runs),
            stream=STREAM_PREFIX + self.source if self.source else None,
            key=self.delivery,
            task=self.handler,
            statuses=tuple(Status(s) for s in statuses),
            since=now - _seconds(self.since, "--since") if self.since else None,
            until=now - _seconds(self.until, "--until") if self.until else None,
        )


def _filters(function: Callable[..., Any]) -> Callable[..., Any]:
    """Add the filter options; the command gets them as one ``filters: Filters`` argument."""

    @functools.wraps(function)
    def gather(**kwargs: Any) -> Any:
        fields = {name: kwargs.pop(name) for name in Filters.__slots__}
        return function(filters=Filters(**fields), **kwargs)

    wrapped: Callable[..., Any] = gather
    for option in reversed(
        [
            click.option("--source", help="Only this source."),
            click.option("--delivery", help="Only this delivery key (with --source)."),
            click.option("--handler", help="Only this handler (module:function)."),
            click.option("--since", help="Only deliveries younger than this (30m, 2h, 1d)."),
            click.option("--until", help="Only deliveries older than this (30m, 2h, 1d)."),
        ]
    ):
        wrapped = option(wrapped)
    return wrapped


@hooks.command(context_settings=CONTEXT)
@_config_option
@click.argument("runs", nargs=-1, type=int)
@_filters
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in Status if s is not Status.RUNNING]),
    help="Only runs in this status (repeatable).",
)
def replay(
    config_file: str | None,
    runs: tuple[int, ...],
    filters: Filters,
    statuses: tuple[str, ...],
) -> None:
    """Run handler runs again: RUNS by id, or every run the filters select."""
    selection = filters.selection(runs, statuses)
    if selection == Selection(queue=QUEUE):
        raise click.UsageError("name runs by id or give at least one filter")
    count = _with_store(config_file, lambda store: store.replay(selection))
    click.echo(f"{count} run{'s' if count != 1 else ''} will run again")


@hooks.group(context_settings=CONTEXT)
def dead() -> None:
    """The dead letters: runs that failed every attempt, or failed for good."""


@dead.command("list", context_settings=CONTEXT)
@_config_option
@_filters
@click.option("--limit", type=int, default=50, show_default=True)
def dead_list(
    config_file: str | None,
    filters: Filters,
    limit: int,
) -> None:
    """List dead runs, newest first."""
    selection = filters.selection((), ("dead",))
    jobs = _with_store(config_file, lambda store: _jobs_with_messages(store, selection, limit))
    if not jobs:
        click.echo("no dead runs")
    for job, stream, key in jobs:
        _print_job(job, stream, key)


@dead.command("retry", context_settings=CONTEXT)
@_config_option
@click.argument("runs", nargs=-1, type=int)
@_filters
def dead_retry(
    config_file: str | None,
    runs: tuple[int, ...],
    filters: Filters,
) -> None:
    """Run dead runs again (RUNS by id, or all the filters select)."""
    selection = filters.selection(runs, ("dead",))
    count = _with_store(config_file, lambda store: store.replay(selection))
    click.echo(f"{count} dead run{'s' if count != 1 else ''} will run again")


@dead.command("drop", context_settings=CONTEXT)
@_config_option
@click.argument("runs", nargs=-1, type=int)
@_filters
@click.option("--yes", is_flag=True, help="Drop without asking.")
def dead_drop(
    config_file: str | None,
    runs: tuple[int, ...],
    filters: Filters,
    yes: bool,
) -> None:
    """Delete dead runs (RUNS by id, or all the filters select); the deliveries stay."""
    selection = filters.selection(runs, ("dead",))
    if not yes and not runs:
        click.confirm("drop every dead run these filters select?", abort=True)
    count = _with_store(config_file, lambda store: store.drop(selection))
    click.echo(f"{count} dead run{'s' if count != 1 else ''} dropped")


@hooks.command(context_settings=CONTEXT)
@_config_option
@_filters
@click.option("--interval", type=float, default=1.0, show_default=True, help="Seconds per poll.")
@click.option("--once", is_flag=True, help="Print the latest runs and stop.")
def tail(
    config_file: str | None,
    filters: Filters,
    interval: float,
    once: bool,
) -> None:
    """Follow handler runs as they are created and change state."""
    selection = filters.selection()

    async def follow(store: Store) -> None:
        seen: dict[int, tuple[str, int]] = {}
        while True:
            rows = await _jobs_with_messages(store, selection, 200)
            for job, stream, key in reversed(rows):
                state = (job.status.value, job.attempts)
                if seen.get(job.id) != state:
                    seen[job.id] = state
                    _print_job(job, stream, key)
            if once:
                return
            await asyncio.sleep(interval)

    with contextlib.suppress(KeyboardInterrupt):
        _with_store(config_file, follow)


@hooks.command(context_settings=CONTEXT)
@_config_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(config_file: str | None, as_json: bool) -> None:
    """How many handler runs are pending, running, succeeded and dead."""
    counts = _with_store(config_file, lambda store: store.counts(QUEUE))
    if as_json:
        click.echo(orjson.dumps({s.value: n for s, n in counts.items()}).decode())
        return
    for status in Status:
        click.echo(f"{status.value:<10} {counts.get(status, 0)}")


@hooks.command(context_settings=CONTEXT)
@_config_option
@click.option(
    "--older-than",
    "older_than",
    required=True,
    help="Age, like 30d or 12h: deliveries stored before then go.",
)
def purge(config_file: str | None, older_than: str) -> None:
    """Delete old deliveries whose runs have all ended, with those runs.

    The whole job store is purged the same way (push messages and CRM uploads too); deliveries
    with a pending or running run stay. The server does this by itself every hour, for what is
    older than [jobs] retention_days. A purged delivery's id is accepted again if resent.
    """
    before = time.time() - _seconds(older_than, "--older-than")
    count = _with_store(config_file, lambda store: store.purge(before))
    click.echo(f"{count} deliver{'ies' if count != 1 else 'y'} purged")


def _seconds(text: str, flag: str) -> float:
    unit = DURATION_UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    try:
        return float(number) * (unit or 1)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration like 90s, 30m, 2h or 1d", param_hint=flag
        ) from None


async def _jobs_with_messages(
    store: Store, selection: Selection, limit: int
) -> list[tuple[Job, str, str]]:
    jobs = await store.jobs(selection, limit=limit)
    messages = {}
    for job in jobs:
        if job.message_id not in messages:
            messages[job.message_id] = await store.message(job.message_id)
    out = []
    for job in jobs:
        message = messages[job.message_id]
        stream = message.stream.removeprefix(STREAM_PREFIX) if message else "?"
        out.append((job, stream, message.key if message else "?"))
    return out


def _print_job(job: Job, source: str, key: str) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.updated_at))
    error = (job.last_error or "").splitlines()[0:1]
    line = (
        f"{when}  run {job.id:<6} {job.status.value:<9} attempt {job.attempts:<2} "
        f"{source}/{key}  {job.task}"
    )
    if error and job.status is not Status.SUCCEEDED:
        line += f"  ({error[0]})"
    click.echo(line)


def _with_store(config_file: str | None, use: Callable[[Store], Awaitable[_T]]) -> _T:
    try:
        settings = settings_module.load(config_file)
    except ConfigError as exc:
        raise click.ClickException(exc.message) from exc

    async def run() -> _T:
        store = connect(settings.jobs_store_url())
        try:
            await store.open()
            return await use(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except PatchbayError as exc:
        raise click.ClickException(exc.message) from exc
