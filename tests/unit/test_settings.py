"""Settings: TOML, then environment, then flags; every bad value named."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from patchbay.errors import ConfigError
from patchbay.settings import load, redact_url


def test_defaults_listen_on_loopback_9090() -> None:
    """With nothing configured Patchbay listens on 127.0.0.1:9090."""
    settings = load(env={})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 9090)
    assert settings.databases == ()


def test_layers_override_in_order(tmp_path: Path) -> None:
    """Flags beat the environment, which beats the file."""
    config = tmp_path / "p.toml"
    config.write_text(
        "[server]\nport = 1000\nworkers = 3\n[sql]\npool_size = 4\n"
        '[databases.main]\nurls = ["sqlite:///a.db"]\npool_size = 2\n'
    )
    settings = load(
        config,
        env={"PATCHBAY_SERVER__PORT": "2000", "PATCHBAY_SERVER__WORKERS": "2"},
        overrides={"server.port": 3000},
    )
    assert settings.server.port == 3000
    assert settings.server.workers == 2
    assert settings.database("main") is not None
    main = settings.database("main")
    assert main is not None and main.pool.pool_size == 2 and main.kind == "sqlite"


def test_database_from_environment() -> None:
    """PATCHBAY_DATABASES__NAME holds a comma-separated failover group."""
    settings = load(env={"PATCHBAY_DATABASES__MAIN": "mysql://a/x,mysql://b/x"})
    assert settings.databases[0].urls == ("mysql://a/x", "mysql://b/x")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PATCHBAY_SERVER__PORT": "abc"}, "server.port: expected an integer, got 'abc'"),
        ({"PATCHBAY_SERVER__PROT": "1"}, "server.prot: unknown setting"),
        ({"PATCHBAY_SERVER__COMPAT": "loose"}, "server.compat: expected one of"),
        ({"PATCHBAY_SQL__FAILOVER": "maybe"}, "sql.failover: expected true or false"),
        ({"PATCHBAY_SQL__QUERY_TIMEOUT": "-1"}, "sql.query_timeout: must not be negative"),
        ({"PATCHBAY_DATABASES__X": "redis://h"}, "databases.x.urls:"),
        ({"PATCHBAY_DATABASES__X": "mysql://a/b,sqlite:///c"}, "all servers of one database"),
        ({"PATCHBAY_SERVER__ALLOW_NETWORKS": "nonsense"}, "server.allow_networks"),
        ({"PATCHBAY_SQL__PIPELINE_DEPTH": "0"}, "sql.pipeline_depth: must be at least 1"),
        ({"PATCHBAY_SQL__POOL_SIZE": "0"}, "sql.pool_size: must be at least 1"),
        ({"PATCHBAY_SQL__PROBE_INTERVAL": "0"}, "sql.probe_interval: must be positive"),
        ({"PATCHBAY_JOBS__RETENTION_DAYS": "3"}, "jobs.retention_days: 0 (keep everything) or"),
        ({"PATCHBAY_JOBS__RETENTION_DAYS": "-1"}, "jobs.retention_days: must not be negative"),
        ({"PATCHBAY_JOBS__LEASE": "0"}, "jobs.lease: must be more than 0"),
        ({"PATCHBAY_JOBS__POLL_INTERVAL": "0"}, "jobs.poll_interval: must be more than 0"),
        (
            {"PATCHBAY_DATABASES__X": "mysql://a/b", "PATCHBAY_SQL__FAILURES_TO_DOWN": "0"},
            "sql.failures_to_down: must be at least 1",
        ),
    ],
)
def test_bad_values_name_their_key(env: dict[str, str], message: str) -> None:
    """A bad setting is refused with a message that names the key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(env=env)


def test_retention_defaults_to_30_days_and_0_keeps_everything() -> None:
    """Ended messages are kept 30 days unless told otherwise; 0 turns the purge off."""
    assert load(env={}).jobs.retention_days == 30
    assert load(env={"PATCHBAY_JOBS__RETENTION_DAYS": "0"}).jobs.retention_days == 0
    assert load(env={"PATCHBAY_JOBS__RETENTION_DAYS": "7"}).jobs.retention_days == 7


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    """A file that is not TOML gives a ConfigError naming the file."""
    config = tmp_path / "bad.toml"
    config.write_text("[server\n")
    with pytest.raises(ConfigError, match=re.escape("bad.toml")):
        load(config, env={})


def test_redact_url_hides_the_password() -> None:
    """Passwords never reach logs, stats or errors."""
    assert redact_url("mysql://u:secret@h:1/db") == "mysql://u:***@h:1/db"
    assert redact_url("sqlite:///x.db") == "sqlite:///x.db"


ZOHO_SOURCE = """
[crm]
client_id = "1000.ID"
client_secret = "secret"
refresh_token = "1000.refresh"
data_center = "eu"
[webhooks.sources.crm]
provider = "zoho"
secrets = ["channel-token"]
channel_id = "1000000068001"
events = ["Leads.all", "Deals.edit"]
notify_url = "https://gw.example/hooks/crm"
"""


def test_zoho_section_and_channel_settings(tmp_path: Path) -> None:
    """[crm] holds the account; a zoho source's channel settings are validated and kept."""
    config = tmp_path / "p.toml"
    config.write_text(ZOHO_SOURCE + "channel_lifetime = 172800\n")
    settings = load(config, env={"PATCHBAY_CRM__TIMEOUT": "12"})
    assert settings.crm.data_center == "eu" and settings.crm.timeout == 12.0
    assert settings.crm.configured and (settings.crm.accounts_url, settings.crm.api_url) == (
        "",
        "",
    )
    crm = settings.webhooks.source("crm")
    assert crm is not None
    assert (crm.channel_id, crm.events, crm.channel_lifetime) == (
        "1000000068001",
        ("Leads.all", "Deals.edit"),
        172800.0,
    )
    assert crm.channels == ("1000000068001",)  # so verification accepts only this channel
    assert load(env={}).crm.data_center == "com"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("channel_lifetime = 604801\n", "webhooks.sources.crm.channel_lifetime: must be between"),
        ("channel_lifetime = 60\n", "webhooks.sources.crm.channel_lifetime: must be between"),
        ('channels = ["1"]\n', "webhooks.sources.crm.channels: must include channel_id"),
        ('secrets = ["' + "x" * 51 + '"]\n', "webhooks.sources.crm.secrets: the first secret"),
        ("secrets = []\n", "webhooks.sources.crm.secrets: the channel's token"),
        ('events = ["Leads.sing"]\n', "webhooks.sources.crm.events: 'Leads.sing'"),
        ("events = []\n", "webhooks.sources.crm.events: required"),
        ('notify_url = "gw.example"\n', "webhooks.sources.crm.notify_url: expected"),
    ],
)
def test_bad_channel_settings_name_their_key(tmp_path: Path, extra: str, message: str) -> None:
    """A bad channel setting is refused with a message that names the key."""
    config = tmp_path / "p.toml"
    base = ZOHO_SOURCE
    for line in extra.splitlines():
        key = line.partition(" ")[0]
        base = "\n".join(x for x in base.splitlines() if not x.startswith(key + " "))
    config.write_text(base + "\n" + extra)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(config, env={})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ZOHO_SOURCE.replace('client_secret = "secret"\n', ""), "crm.client_secret: required"),
        (ZOHO_SOURCE.replace('"eu"', '"mars"'), "crm.data_center: expected one of"),
        (ZOHO_SOURCE + "[crm.x]\n", "crm.x: unknown setting"),
        (
            ZOHO_SOURCE.replace('"1000000068001"', '"abc"'),
            "webhooks.sources.crm.channel_id: expected a number",
        ),
        (
            ZOHO_SOURCE.replace('provider = "zoho"', 'provider = "github"'),
            "webhooks.sources.crm.channel_id: only a zoho source",
        ),
        ('[crm]\napi_url = "ftp://x"\n', "crm.api_url: expected an http:// or https:// URL"),
        (
            '[webhooks.sources.x]\nprovider = "zoho"\nevents = ["A.all"]\n',
            "events: needs channel_id",
        ),
    ],
)
def test_bad_zoho_settings_name_their_key(tmp_path: Path, text: str, message: str) -> None:
    """Missing credentials, an unknown data centre or a misplaced channel are refused clearly."""
    config = tmp_path / "p.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(config, env={})
