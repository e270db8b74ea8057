"""``patchbay emulate ...``: run a local emulator of a service Patchbay talks to.

``patchbay emulate fcm`` serves Firebase Cloud Messaging (OAuth tokens at ``/token``, sends at
``/v1/projects/{project}/messages:send``, the topic APIs) over HTTP/1.1 and h2c. Without
``--service-account`` any well-formed RS256 assertion gets a token; with it, the assertion's
signature is checked against that account's key. ``--write-service-account FILE`` creates a
throwaway account whose ``token_uri`` is this emulator, writes it to FILE and checks signatures
against it: point a client (the gateway, firebase-admin) at FILE and it works offline.

``patchbay emulate zoho`` serves Zoho's accounts server and CRM notification API and prints the
client and refresh token to put in ``[crm]``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import click

from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.keys import public_keys, service_account
from patchbay.emulators.serve import base_url, listen, run
from patchbay.emulators.zoho import ZohoEmulator

CONTEXT = {"help_option_names": ["--help"]}  # -h is --host, as in ``patchbay serve``


@click.group(context_settings=CONTEXT)
def emulate() -> None:
    """Run a local emulator of a service (for tests and demos, never production)."""


@emulate.command(context_settings=CONTEXT)
@click.option("-h", "--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-p", "--port", type=int, default=9091, show_default=True, help="Port (0: any).")
@click.option(
    "--service-account",
    "service_account_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Service-account JSON whose key must sign token requests (default: any RS256 key).",
)
@click.option(
    "--write-service-account",
    "write_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a new test service account (token_uri: this emulator) to FILE and require it.",
)
@click.option("--project", help="Project id (default: the service account's, else demo-project).")
@click.option(
    "--latency", type=float, default=0.0, show_default=True, help="Seconds added to each send."
)
@click.option(
    "--token-lifetime",
    type=float,
    default=3600.0,
    show_default=True,
    help="Seconds an access token lives.",
)
@click.option(
    "--unregistered-prefix",
    "prefixes",
    multiple=True,
    metavar="PREFIX",
    help="Tokens starting with PREFIX answer UNREGISTERED (repeatable).",
)
def fcm(
    host: str,
    port: int,
    service_account_file: Path | None,
    write_file: Path | None,
    project: str | None,
    latency: float,
    token_lifetime: float,
    prefixes: tuple[str, ...],
) -> None:
    """Serve Firebase Cloud Messaging (HTTP v1, OAuth tokens, topics) locally."""
    if service_account_file is not None and write_file is not None:
        raise click.UsageError("give --service-account or --write-service-account, not both")
    sock = listen(host, port)  # bound first, so that a port of 0 is known to the token_uri
    url = base_url(sock)
    keys: dict[str, str] | None = None
    note = "any well-formed RS256 assertion gets a token"
    if service_account_file is not None:
        try:
            info = json.loads(service_account_file.read_text())
            keys = public_keys(info)
        except (OSError, ValueError) as exc:
            sock.close()
            raise click.BadParameter(str(exc), param_hint="--service-account") from None
        project = project or info.get("project_id") or "demo-project"
        note = f"assertions must be signed by {service_account_file}"
    elif write_file is not None:
        project = project or "demo-project"
        info, public = service_account(f"{_reachable(url)}/token", project)
        keys = {info["private_key_id"]: public}
        _write_secret(write_file, json.dumps(info, indent=2) + "\n")
        note = f"wrote the service account {write_file}; assertions must be signed by it"
    project = project or "demo-project"
    emulator = FcmEmulator(
        project_id=project, public_keys=keys, token_lifetime=token_lifetime, latency=latency
    )
    for prefix in prefixes:
        emulator.unregister_prefix(prefix)
    click.echo(f"FCM emulator on {url} (project {project}, tokens at {url}/token; {note})")
    sys.stdout.flush()
    run(emulator, sock=sock)


@emulate.command(context_settings=CONTEXT)
@click.option("-h", "--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-p", "--port", type=int, default=9092, show_default=True, help="Port (0: any).")
@click.option(
    "--refresh-token",
    default="1000.emulator.refresh-token",
    show_default=True,
    help="The refresh token it accepts (fixed, so settings survive a restart).",
)
@click.option(
    "--records",
    "records",
    multiple=True,
    metavar="MODULE:ID[,ID...]",
    help="Only these records exist in MODULE (repeatable); default: every numeric id.",
)
@click.option(
    "--upload-limit",
    type=int,
    default=60,
    show_default=True,
    help="Uploads a minute before Zoho's 5-minute block (0: no limit).",
)
@click.option(
    "--max-upload-mb",
    type=click.Choice(["20", "100"]),
    default="20",
    show_default=True,
    help="Largest file: the old API's 20 MB or v8's 100 MB.",
)
def zoho(
    host: str,
    port: int,
    refresh_token: str,
    records: tuple[str, ...],
    upload_limit: int,
    max_upload_mb: str,
) -> None:
    """Serve Zoho's accounts server and CRM API (attachments, notifications) locally."""
    restricted: dict[str, list[str]] = {}
    for spec in records:
        module, sep, ids = spec.partition(":")
        if not sep or not module or not all(i.strip().isdigit() for i in ids.split(",")):
            raise click.BadParameter(f"{spec!r} is not MODULE:ID[,ID...]", param_hint="--records")
        restricted.setdefault(module, []).extend(i.strip() for i in ids.split(","))
    sock = listen(host, port)
    url = base_url(sock)
    emulator = ZohoEmulator(
        api_domain=_reachable(url),
        records=restricted or None,
        upload_limit=upload_limit or None,
        max_upload_bytes=int(max_upload_mb) * 1024 * 1024,
    )
    emulator.refresh_token = emulator.accounts.new_refresh_token(value=refresh_token)
    click.echo(f"Zoho emulator on {url} (accounts and API; configure [crm] with the values below)")
    click.echo(f'client_id = "{emulator.client_id}"')
    click.echo(f'client_secret = "{emulator.client_secret}"')
    click.echo(f'refresh_token = "{emulator.refresh_token}"')
    click.echo(f'accounts_url = "{_reachable(url)}"')
    click.echo(f'api_url = "{_reachable(url)}"')
    sys.stdout.flush()
    run(emulator, sock=sock)


def _reachable(url: str) -> str:
    """``url`` with a wildcard address (0.0.0.0, ::) replaced by loopback, for clients to use."""
    scheme, _, rest = url.partition("://")
    host, _, port = rest.rpartition(":")
    bare = host.strip("[]")
    try:
        if ipaddress.ip_address(bare).is_unspecified:
            host = "127.0.0.1" if ipaddress.ip_address(bare).version == 4 else "[::1]"
    except ValueError:
        pass
    return f"{scheme}://{host}:{port}"


def _write_secret(path: Path, text: str) -> None:
    """Write ``text`` readable by the owner only: it holds a private key."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
