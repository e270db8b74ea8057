"""Service-account tokens: loading the file, early renewal, single flight, failures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from patchbay.emulators.fcm import FcmEmulator
from patchbay.errors import ConfigError
from patchbay.push import AccessToken, Message, Notification, PushUnavailable
from patchbay.push.auth import ServiceAccountTokens, load_service_account
from tests.unit.push.conftest import SenderFactory, VirtualTime, settings


def test_renewal_is_due_5_minutes_or_20_percent_early() -> None:
    """An hour-long token is renewed 5 minutes early; a 60-second one after 48 seconds."""
    hour = AccessToken("ya29.secret", obtained_at=0.0, expires_at=3600.0)
    assert hour.usable(3299.0) and not hour.usable(3300.0)
    minute = AccessToken("b", obtained_at=0.0, expires_at=60.0)
    assert minute.usable(47.9) and not minute.usable(48.0)
    assert hour.authorization == "Bearer ya29.secret"
    assert "secret" not in repr(hour)  # the token stays out of logs


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "cannot read"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ('{"type": "authorized_user"}', "is a 'authorized_user' file, not a service account"),
        ('{"type": "service_account", "client_email": "x"}', "has no private_key"),
    ],
)
def test_unusable_files_name_the_setting(tmp_path: Path, content: str | None, error: str) -> None:
    """Every unusable file is a ConfigError on push.service_account saying what is wrong."""
    path = tmp_path / "sa.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=r"^push\.service_account: ") as caught:
        load_service_account(path)
    assert error in str(caught.value)


def test_a_key_google_auth_cannot_read_is_a_config_error(
    account: tuple[dict[str, str], dict[str, str]],
) -> None:
    """A mangled private key fails when the source is built, not at the first send."""
    broken = {**account[0], "private_key": "-----BEGIN PRIVATE KEY-----\nnope\n"}
    with pytest.raises(ConfigError, match="unusable service account"):
        ServiceAccountTokens.from_info(broken, httpx.AsyncClient())


async def test_concurrent_callers_share_one_refresh(
    emulator: FcmEmulator,
    account: tuple[dict[str, str], dict[str, str]],
    http: httpx.AsyncClient,
    clock: VirtualTime,
) -> None:
    """200 concurrent token() calls: one token request, one token for all."""
    source = ServiceAccountTokens.from_info(account[0], http, clock=clock)
    assert source.project_id == "demo-project"
    tokens = await asyncio.gather(*(source.token() for _ in range(200)))
    assert len({t.value for t in tokens}) == 1
    assert emulator.token_requests == 1 and source.refreshes == 1
    assert tokens[0].expires_at - tokens[0].obtained_at == pytest.approx(3600, abs=5)


async def test_invalidate_forgets_only_the_named_token(
    emulator: FcmEmulator,
    account: tuple[dict[str, str], dict[str, str]],
    http: httpx.AsyncClient,
    clock: VirtualTime,
) -> None:
    """A stale 401 (for an older token) does not throw away the current one."""
    source = ServiceAccountTokens.from_info(account[0], http, clock=clock)
    first = await source.token()
    source.invalidate(first)
    second = await source.token()
    assert second.value != first.value
    source.invalidate(first)
    assert await source.token() == second
    assert emulator.token_requests == 2


async def test_cancelled_caller_does_not_cancel_the_refresh(
    emulator: FcmEmulator,
    account: tuple[dict[str, str], dict[str, str]],
    http: httpx.AsyncClient,
    clock: VirtualTime,
) -> None:
    """One waiter cancelled mid-refresh: the others still get the token it fetches."""
    source = ServiceAccountTokens.from_info(account[0], http, clock=clock)
    doomed = asyncio.create_task(source.token())
    survivor = asyncio.create_task(source.token())
    await asyncio.sleep(0)
    doomed.cancel()
    assert (await survivor).value
    assert emulator.token_requests == 1
    await source.aclose()


async def test_unreachable_token_endpoint_cools_down(
    account: tuple[dict[str, str], dict[str, str]], clock: VirtualTime
) -> None:
    """Unreachable: PushUnavailable, not asked again for a second, then asked again."""
    attempts = 0

    def refuse(request: httpx.Request) -> httpx.Response:
        nonlocal attempts
        attempts += 1
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as http:
        source = ServiceAccountTokens.from_info(account[0], http, clock=clock)
        with pytest.raises(PushUnavailable, match="cannot reach the token endpoint"):
            await source.token()
        with pytest.raises(PushUnavailable):
            await source.token()
        assert attempts == 1
        clock.advance(1.5)
        with pytest.raises(PushUnavailable):
            await source.token()
        assert attempts == 2


async def test_sends_retry_while_the_token_endpoint_is_down(
    account: tuple[dict[str, str], dict[str, str]],
    clock: VirtualTime,
    make_sender: SenderFactory,
) -> None:
    """A token endpoint that stays down: failed after max_attempts tries, no FCM request."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as down:
        tokens = ServiceAccountTokens.from_info(account[0], down, clock=clock)
        sender = make_sender(settings(max_attempts=3), tokens=tokens)
        result = await sender.send(Message(token="t", notification=Notification(title="x")))
    assert (result.outcome, result.attempts, result.error_code) == ("failed", 0, "PUSH_UNAVAILABLE")
    assert "gave up after 3 attempts" in result.detail


def test_service_account_file_round_trip(
    tmp_path: Path, account: tuple[dict[str, str], dict[str, str]]
) -> None:
    """A file as Google issues it loads, and from_file builds a source with its project."""
    path = tmp_path / "sa.json"
    path.write_text(json.dumps(account[0]))
    assert load_service_account(path)["client_email"] == account[0]["client_email"]
    source = ServiceAccountTokens.from_file(path, httpx.AsyncClient())
    assert source.project_id == "demo-project"
