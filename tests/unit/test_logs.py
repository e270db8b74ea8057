"""Where Patchbay's log events go: JSON on stderr for the server, ``logging`` for a library user."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from patchbay.crm.client import CrmClient
from patchbay.logs import as_library, configure
from patchbay.push import Sender
from patchbay.push.auth import AccessToken
from patchbay.settings import CrmSettings, PushSettings


@pytest.fixture(autouse=True)
def fresh_structlog() -> Iterator[None]:
    """Each test starts from structlog's unconfigured defaults and leaves them so."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


class NoTokens:
    """A token source that is never asked (only construction is tested)."""

    async def token(self) -> AccessToken:
        raise AssertionError("not asked")

    def invalidate(self, token: AccessToken) -> None:
        raise AssertionError("not asked")


def test_library_events_skip_stdout_and_reach_logging(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Unconfigured: info stays off stdout; a warning reaches ``logging`` under its name."""
    as_library()
    log = structlog.get_logger("patchbay.push")
    with caplog.at_level(logging.WARNING, logger="patchbay.push"):
        log.info("fcm token refreshed", expires_in=3600)
        log.warning("fcm quota exceeded", pause=60)
    assert capsys.readouterr().out == ""
    assert [(r.name, r.levelno) for r in caplog.records] == [("patchbay.push", logging.WARNING)]
    assert "fcm quota exceeded" in caplog.records[0].getMessage()


def test_an_application_configuration_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    """An application that configured structlog keeps its renderer and level."""
    configure("info")
    as_library()
    structlog.get_logger("patchbay.push").info("kept", n=1)
    assert '"event": "kept"' in capsys.readouterr().err


async def test_the_library_entry_points_route_to_logging() -> None:
    """Building a ``Sender`` or a ``CrmClient`` is what switches an unconfigured structlog."""
    push = PushSettings(project_id="demo-project", fcm_url="http://127.0.0.1:9")
    async with Sender(push, NoTokens()):
        assert structlog.is_configured()
    structlog.reset_defaults()
    crm = CrmSettings(client_id="1000.X", client_secret="s", refresh_token="r")
    async with CrmClient(crm, store=None):
        assert structlog.is_configured()
