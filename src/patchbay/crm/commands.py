"""``patchbay crm attach`` and ``patchbay crm list``: Zoho CRM attachments from the command line.

They call Zoho directly with the ``[crm]`` settings, through the same job store as the server so
the access token and the call budget are shared with it (one refresh at a time, 60 calls a minute
for everyone when configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from patchbay import settings as settings_module
from patchbay.crm.client import CrmClient
from patchbay.errors import ConfigError, PatchbayError
from patchbay.jobs.store import connect

_T = TypeVar("_T")
CONTEXT = {"help_option_names": ["--help"]}


@click.group(context_settings=CONTEXT)
def crm() -> None:
    """Zoho CRM: attach files and links to records, list a record's attachments."""


@crm.command(context_settings=CONTEXT)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.option("--url", help="Attach this link instead of a file (Zoho fetches it, not Patchbay).")
@click.option("--title", help="The link's title.")
@click.argument("module")
@click.argument("record_id")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
def attach(
    config_file: str | None,
    url: str | None,
    title: str | None,
    module: str,
    record_id: str,
    file: str | None,
) -> None:
    """Attach FILE (or --url) to the record; print the attachment id."""
    if (file is None) == (url is None):
        raise click.UsageError("give a FILE or --url, not both")
    size = Path(file).stat().st_size if file and Path(file).is_file() else 0

    async def run(client: CrmClient) -> str:
        if url is not None:
            return (await client.attach_url(module, record_id, url, title=title)).id
        # Opened at the first bytes sent, so that a file refused before any request (too big,
        # unreadable) prints only its error.
        with contextlib.ExitStack() as stack:
            bar: Any = None
            sent = 0

            def progress(done: int, total: int) -> None:
                nonlocal bar, sent
                if bar is None:
                    bar = stack.enter_context(
                        click.progressbar(length=size, label="uploading", file=sys.stderr)
                    )
                bar.update(done - sent)
                sent = done

            assert file is not None
            return (await client.upload(module, record_id, file, progress=progress)).id

    click.echo(_with_client(config_file, run))


@crm.command("list", context_settings=CONTEXT)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.argument("module")
@click.argument("record_id")
def list_(config_file: str | None, module: str, record_id: str) -> None:
    """List the record's attachments: id, size, time, name."""

    async def run(client: CrmClient) -> None:
        for item in await client.list(module, record_id):
            when = item.created_time.isoformat() if item.created_time else "-"
            size = "link" if item.size is None else str(item.size)
            click.echo(f"{item.id}\t{size}\t{when}\t{item.link_url or item.file_name}")

    _with_client(config_file, run)


def _with_client(config_file: str | None, use: Callable[[CrmClient], Awaitable[_T]]) -> _T:
    try:
        settings = settings_module.load(config_file)
        if not settings.crm.configured:
            raise ConfigError("crm.client_id, crm.client_secret and crm.refresh_token: required")

        async def run() -> _T:
            store = connect(settings.jobs_store_url())
            await store.open()
            try:
                async with CrmClient(settings.crm, store=store) as client:
                    return await use(client)
            finally:
                await store.close()

        return asyncio.run(run())
    except PatchbayError as exc:
        click.echo(f"patchbay: {exc.message}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
