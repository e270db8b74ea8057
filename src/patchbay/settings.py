"""Settings: one TOML file, then ``PATCHBAY_*`` environment variables, then command-line flags.

Each layer overrides the one before. Everything is validated once at start-up into frozen
dataclasses; a bad value raises ``ConfigError`` with a message that names the key, e.g.
``server.port: expected an integer, got 'abc'``.

Environment variables name a key as ``PATCHBAY_<SECTION>__<KEY>`` (``PATCHBAY_SERVER__PORT=9091``,
``PATCHBAY_SQL__POOL_SIZE=8``); a database is ``PATCHBAY_DATABASES__<NAME>=url[,url...]``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

from patchbay.errors import ConfigError

_T = typing.TypeVar("_T")
ENV_PREFIX = "PATCHBAY_"
SCHEMES = ("sqlite", "mysql", "mariadb", "postgresql", "postgres")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How Patchbay listens and behaves as an HTTP server."""

    host: str = "127.0.0.1"
    port: int = 9090
    workers: int = 1
    compat: Literal["default", "strict"] = "default"
    state_dir: str = "var"
    max_request_bytes: int = 1_048_576
    receive_timeout: float = 10.0
    drain_timeout: float = 30.0
    keep_alive_timeout: float = 5.0
    max_connections: int = 4096
    allow_networks: tuple[str, ...] = ()
    token: str = ""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = False


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """Connection pool and failover behaviour of one database (defaults in ``[sql]``)."""

    pool_size: int = 16
    connect_timeout: float = 2.0
    acquire_timeout: float = 5.0
    query_timeout: float = 30.0
    failover: bool = True
    balance: Literal["round_robin", "least_outstanding"] = "round_robin"
    writes: Literal["first", "any"] = "first"
    failures_to_down: int = 1
    probe_interval: float = 0.5


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """One named database: what ``SERVER`` selects, served by one or more backend URLs."""

    name: str
    urls: tuple[str, ...]
    pool: PoolSettings = field(default_factory=PoolSettings)

    @property
    def kind(self) -> str:
        """Return ``sqlite``, ``mysql`` or ``postgresql``."""
        return backend_kind(self.urls[0])


@dataclass(frozen=True, slots=True)
class Settings:
    """All of Patchbay's settings."""

    server: ServerSettings = field(default_factory=ServerSettings)
    sql: PoolSettings = field(default_factory=PoolSettings)
    databases: tuple[DatabaseSettings, ...] = ()

    def database(self, name: str) -> DatabaseSettings | None:
        """Return the database called ``name``, if there is one."""
        for db in self.databases:
            if db.name == name:
                return db
        return None


def backend_kind(url: str) -> str:
    """Return the backend kind of a database URL."""
    scheme = urlsplit(url).scheme.lower()
    return {"mariadb": "mysql", "postgres": "postgresql"}.get(scheme, scheme)


def load(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build validated settings from a TOML file, the environment and flag overrides.

    ``overrides`` uses dotted keys (``{"server.port": 9091, "databases": {"name": [urls]}}``).
    """
    raw: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path}: not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
    _merge_env(raw, os.environ if env is None else env)
    for key, value in (overrides or {}).items():
        if key == "databases":
            raw.setdefault("databases", {}).update(value)
            continue
        section, _, name = key.partition(".")
        raw.setdefault(section, {})[name] = value
    return _build(raw)


def _merge_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        section = section.lower()
        if section == "databases":
            raw.setdefault("databases", {})[key.lower()] = value
        else:
            raw.setdefault(section, {})[key.lower()] = value


def _build(raw: dict[str, Any]) -> Settings:
    unknown = set(raw) - {"server", "sql", "databases"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section")
    server = _dataclass_from(ServerSettings, raw.get("server", {}), "server")
    sql = _dataclass_from(PoolSettings, raw.get("sql", {}), "sql")
    for net in server.allow_networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"server.allow_networks: {net!r} is not a network") from exc
    if not 0 < server.port < 65536:
        raise ConfigError(f"server.port: {server.port} is not a TCP port")
    for key in ("workers", "max_request_bytes", "max_connections"):
        if getattr(server, key) < 1:
            raise ConfigError(f"server.{key}: must be at least 1")
    databases = []
    for name, value in _table(raw.get("databases", {}), "databases").items():
        databases.append(_database(name, value, sql))
    return Settings(server=server, sql=sql, databases=tuple(databases))


def _database(name: str, value: Any, defaults: PoolSettings) -> DatabaseSettings:
    where = f"databases.{name}"
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise ConfigError(f"{where}: a database name uses letters, digits, '_', '-' and '.'")
    if isinstance(value, str | list):
        value = {"urls": value}
    table = dict(_table(value, where))
    urls = table.pop("urls", None)
    if isinstance(urls, str):
        urls = [u.strip() for u in urls.split(",") if u.strip()]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise ConfigError(f"{where}.urls: expected one or more database URLs")
    kinds = set()
    for url in urls:
        scheme = urlsplit(url).scheme.lower()
        if scheme not in SCHEMES:
            raise ConfigError(
                f"{where}.urls: {redact_url(url)!r} must start with sqlite:///, mysql:// "
                "or postgresql://"
            )
        kinds.add(backend_kind(url))
    if len(kinds) > 1:
        raise ConfigError(f"{where}.urls: all servers of one database must be of one kind")
    merged = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(PoolSettings)}
    merged.update(table)
    pool = _dataclass_from(PoolSettings, merged, where)
    return DatabaseSettings(name=name, urls=tuple(urls), pool=pool)


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table")
    return value


def _dataclass_from(cls: type[_T], values: Any, where: str) -> _T:
    values = _table(values, where)
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown setting")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    for name, hint in hints.items():
        value = kwargs.get(name)
        if hint in (int, float) and isinstance(value, int | float) and value < 0:
            raise ConfigError(f"{where}.{name}: must not be negative")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}"
            )
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings")
        return tuple(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = hint(value)
        except (TypeError, ValueError):
            kind = "an integer" if hint is int else "a number"
            raise ConfigError(f"{where}: expected {kind}, got {value!r}") from None
        if hint is int and isinstance(value, float) and value != number:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***`` (for logs, stats and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{netloc[2]}").geturl()
