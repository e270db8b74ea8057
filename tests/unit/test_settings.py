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
    ],
)
def test_bad_values_name_their_key(env: dict[str, str], message: str) -> None:
    """A bad setting is refused with a message that names the key."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(env=env)


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
