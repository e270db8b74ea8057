"""``patchbay push send``: one notification, or one to every token of a file, from the command line.

It sends directly with the ``[push]`` settings (no server needed): the blocking sender, which is
the concurrent one run on its own event loop thread.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import click

from patchbay import settings as settings_module
from patchbay.errors import ConfigError, PatchbayError
from patchbay.push.client import BlockingSender
from patchbay.push.messages import Message, Notification

CONTEXT = {"help_option_names": ["--help"]}


@click.group(context_settings=CONTEXT)
def push() -> None:
    """Push notifications through Firebase Cloud Messaging (HTTP v1)."""


@push.command(context_settings=CONTEXT)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML settings.")
@click.option("--token", help="The device's registration token.")
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    help="A file of registration tokens, one per line ('-': standard input).",
)
@click.option("--topic", help="Send to a topic instead.")
@click.option("--title", help="Notification title.")
@click.option("--body", help="Notification body.")
@click.option("--data", multiple=True, metavar="KEY=VALUE", help="A data field (repeatable).")
@click.option(
    "--priority",
    type=click.Choice(["high", "normal"]),
    help="high wakes the device on Android and iOS alike.",
)
@click.option("--dry-run", is_flag=True, help="Ask FCM to validate only; nothing is delivered.")
def send(
    config_file: str | None,
    token: str | None,
    tokens_file: str | None,
    topic: str | None,
    title: str | None,
    body: str | None,
    data: tuple[str, ...],
    priority: str | None,
    dry_run: bool,
) -> None:
    """Send one message; print its name (exit 0), or the FCM error code (exit 1)."""
    if sum(x is not None for x in (token, tokens_file, topic)) != 1:
        raise click.UsageError("give exactly one of --token, --tokens FILE or --topic")
    fields: dict[str, str] = {}
    for item in data:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--data")
        fields[key] = value
    try:
        settings = settings_module.load(config_file)
        if not settings.push.service_account:
            raise ConfigError("push.service_account: set it to the service-account JSON file")
        notification = Notification(title=title, body=body) if title or body else None
        template = Message(
            notification=notification,
            data=fields,
            priority=priority,  # type: ignore[arg-type]
        )
        with BlockingSender.from_settings(settings.push) as sender:
            if tokens_file is None:
                message = template.to(token=token) if token else template.to(topic=topic)
                result = sender.send(message, validate_only=dry_run)
                if not result.ok:
                    click.echo(f"{result.error_code}: {result.detail}", err=True)
                    sys.exit(1)
                click.echo(result.name)
                return
            _send_file(sender, template, tokens_file, dry_run)
    except PatchbayError as exc:
        click.echo(f"patchbay: {exc.message}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


def _send_file(sender: BlockingSender, template: Message, path: str, dry_run: bool) -> None:
    total = None if path == "-" else sum(1 for line in _tokens(path))
    counts: Counter[str] = Counter()
    dead: list[str] = []
    with click.progressbar(length=total or 0, label="sending", file=sys.stderr) as bar:
        for result in sender.send_multicast(template, _tokens(path), validate_only=dry_run):
            counts[result.outcome] += 1
            if result.outcome == "dead_token":
                dead.append(result.target)
            bar.update(1)
    click.echo(", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())))
    for token in dead:
        click.echo(f"dead token: {token}")
    if counts["sent"] != sum(counts.values()):
        sys.exit(1)


def _tokens(path: str) -> Iterator[str]:
    """The tokens of a file, read lazily: memory does not grow with the file."""
    stream = sys.stdin if path == "-" else Path(path).open(encoding="utf-8")  # noqa: SIM115
    try:
        for line in stream:
            token = line.strip()
            if token and not token.startswith("#"):
                yield token
    finally:
        if stream is not sys.stdin:
            stream.close()
