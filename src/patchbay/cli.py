"""The ``patchbay`` command."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

import click

from patchbay import demo, logs
from patchbay import settings as settings_module
from patchbay.crm.commands import crm
from patchbay.emulators.commands import emulate
from patchbay.errors import ConfigError
from patchbay.push.commands import push
from patchbay.webhooks.commands import hooks
from patchbay.webhooks.service import build_source

DEMO_NAME = "demo"


@click.group(context_settings={"help_option_names": ["--help"]})
@click.version_option(package_name="patchbay")
def main() -> None:
    """Patchbay: a self-hosted integration gateway (SQL over HTTP, webhooks, push, CRM)."""
    # Commands print their results on stdout; only warnings go to stderr (serve sets its own).
    logs.configure("warning")


@main.command(context_settings={"help_option_names": ["--help"]})
@click.option("-h", "--host", help="Address to listen on (default 127.0.0.1).")
@click.option("-p", "--port", type=int, help="Port to listen on (default 9090).")
@click.option(
    "--db",
    "dbs",
    multiple=True,
    metavar="NAME=URL[,URL...]",
    help="A named database: sqlite:///path, mysql://user:pass@host:port/db or "
    "postgresql://user:pass@host:port/db; several URLs form a failover group. Repeatable; "
    "the first is the default. Without any, the demo SQLite database.",
)
@click.option(
    "--compat", type=click.Choice(["default", "strict"]), help="DBSlayer compatibility mode."
)
@click.option("--workers", type=int, help="Worker processes (default 1).")
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings file."
)
@click.option("--pool-size", type=int, help="Connections per server and worker (default 16).")
@click.option(
    "--pipeline-depth",
    type=int,
    help="MySQL: up to N reads sent together on one connection when the pool is busy "
    "(default 1: never; more throughput, longer p99).",
)
@click.option(
    "--query-timeout", type=float, help="Seconds before a query is cancelled (default 30)."
)
@click.option("--token", help="Require 'Authorization: Bearer TOKEN' on every SQL endpoint.")
@click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="CIDR",
    help="Client network allowed on the SQL endpoints (repeatable); loopback always is.",
)
@click.option("--state-dir", help="Where Patchbay keeps its files (default ./var).")
def serve(
    host: str | None,
    port: int | None,
    dbs: tuple[str, ...],
    compat: str | None,
    workers: int | None,
    config_file: str | None,
    pool_size: int | None,
    pipeline_depth: int | None,
    query_timeout: float | None,
    token: str | None,
    allow: tuple[str, ...],
    state_dir: str | None,
) -> None:
    """Serve SQL over HTTP (DBSlayer's /db, /dbform, /stats*, /shutdown) and POST /hooks/SOURCE."""
    overrides: dict[str, Any] = {}
    for key, value in (
        ("server.host", host),
        ("server.port", port),
        ("server.compat", compat),
        ("server.workers", workers),
        ("server.token", token),
        ("server.state_dir", state_dir),
        ("sql.pool_size", pool_size),
        ("sql.pipeline_depth", pipeline_depth),
        ("sql.query_timeout", query_timeout),
    ):
        if value is not None:
            overrides[key] = value
    if allow:
        overrides["server.allow_networks"] = list(allow)
    databases: dict[str, Any] = {}
    for spec in dbs:
        name, sep, urls = spec.partition("=")
        if not sep or not name or not urls:
            raise click.BadParameter(f"{spec!r} is not NAME=URL[,URL...]", param_hint="--db")
        databases[name] = [u for u in urls.split(",") if u]
    if databases:
        overrides["databases"] = databases
    try:
        settings = settings_module.load(config_file, overrides=overrides)
        if not settings.databases:
            path = demo.ensure(Path(settings.server.state_dir) / "demo.db")
            overrides["databases"] = {DEMO_NAME: [f"sqlite:///{path}"]}
            settings = settings_module.load(config_file, overrides=overrides)
        check_exposure(settings)
        for source in settings.webhooks.sources:  # import every handlers module before serving
            build_source(source, settings.webhooks.retry_delays, settings.webhooks.jitter)
    except ConfigError as exc:
        click.echo(f"patchbay: {exc.message}", err=True)
        sys.exit(2)
    logs.configure(settings.server.log_level)
    from patchbay.server import serve as run

    run(settings)


main.add_command(hooks)
main.add_command(push)
main.add_command(emulate)
main.add_command(crm)


def check_exposure(settings: settings_module.Settings) -> None:
    """Refuse to listen beyond loopback with SQL endpoints open to anyone."""
    host = settings.server.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not settings.server.token and not settings.server.allow_networks:
        raise ConfigError(
            f"server.host: refusing to listen on {host} with the SQL endpoints open to anyone; "
            "DBSlayer clients send no credentials, so set server.allow_networks (--allow CIDR) "
            "or server.token (--token)"
        )
