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
from typing import Any, Final, Literal, get_args, get_origin
from urllib.parse import urlsplit

from patchbay.errors import ConfigError
from patchbay.jobs.model import DEFAULT_DELAYS

Provider = Literal["github", "standard", "svix", "stripe", "slack", "shopify", "zoho", "hmac"]

DataCenter = Literal["us", "com", "eu", "in", "au", "jp", "ca", "cn", "sa"]

_T = typing.TypeVar("_T")
ENV_PREFIX = "PATCHBAY_"
SCHEMES = ("sqlite", "mysql", "mariadb", "postgresql", "postgres")
# Zoho CRM accepts a notification channel for at most a week (API v4 and later).
MAX_CHANNEL_LIFETIME = 7 * 86400.0
MIN_CHANNEL_LIFETIME = 600.0
MAX_CHANNEL_TOKEN = 50  # characters, the documented limit of a channel's token
MAX_CHANNEL_EVENTS = 50
CHANNEL_OPERATIONS = ("create", "edit", "delete", "all")


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
    pipeline_depth: int = 1  # MySQL: >1 sends waiting reads together (see sql/pipeline.py)


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


MIN_RETENTION_DAYS: Final = 7


@dataclass(frozen=True, slots=True)
class JobsSettings:
    """The durable job store that the webhook inbox (and later push and CRM sends) use."""

    store: str = ""  # sqlite:///path or postgresql://...; empty: SQLite in the state directory
    lease: float = 60.0  # seconds a claimed job stays leased before another worker may take it
    poll_interval: float = 0.5  # how often idle workers look for work other processes added
    # Days a message is kept once its jobs have ended (0: forever); see jobs/retention.py.
    retention_days: float = 30.0


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """One webhook source: ``POST /hooks/<name>``, its provider's scheme and its handlers."""

    name: str
    provider: Provider
    secrets: tuple[str, ...] = ()
    handlers: tuple[str, ...] = ()  # "package.module:router" or "package.module"
    tolerance: float = 300.0
    max_body_bytes: int = 1_048_576
    legacy_sha1: bool = False
    max_signatures: int = 10
    header: str = "x-signature"
    template: str = "{body}"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    timestamp_header: str = ""
    id_header: str = ""
    algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    channels: tuple[str, ...] = ()
    retry_delays: tuple[float, ...] = ()  # empty: [webhooks] retry_delays
    # Zoho only: the notification channel Patchbay keeps subscribed (renewed before it expires).
    channel_id: str = ""  # a long, as Zoho wants; empty: nothing is subscribed
    events: tuple[str, ...] = ()  # "Leads.all", "Deals.edit", ...
    notify_url: str = ""  # where Zoho posts, normally this source's public /hooks/<name> URL
    channel_lifetime: float = 86400.0  # seconds each renewal asks for, at most a week


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """The webhook receiver and its dispatcher."""

    concurrency: int = 16  # handler runs at once, per worker process
    handler_timeout: float = 30.0
    retry_delays: tuple[float, ...] = DEFAULT_DELAYS
    jitter: float = 0.2
    sources: tuple[SourceSettings, ...] = ()

    def source(self, name: str) -> SourceSettings | None:
        """Return the source called ``name``, if there is one."""
        for source in self.sources:
            if source.name == name:
                return source
        return None


@dataclass(frozen=True, slots=True)
class CrmSettings:
    """The Zoho CRM account Patchbay calls: attachments out, notification channels renewed."""

    client_id: str = ""
    client_secret: str = ""
    refresh_token: str = ""
    data_center: DataCenter = "com"
    accounts_url: str = ""  # overrides the data centre's accounts server (emulator, tests)
    api_url: str = ""  # overrides the API base the token response names (emulator, tests)
    api_version: str = "v8"
    timeout: float = 30.0
    max_file_bytes: int = 20_971_520  # the seed's 20 MB; Zoho takes up to 100 MB today
    calls_per_minute: int = 0  # 0: no limit; 60: the seed's rule, so its 5-minute block never comes
    concurrency: int = 10  # calls in flight for the whole server (the edition's limit)
    legacy_token: str = ""  # the authtoken old uploadFile clients send; empty: that endpoint is off
    legacy_wait: float = 30.0  # seconds the legacy endpoint waits for the upload before answering

    @property
    def configured(self) -> bool:
        """Whether credentials are set."""
        return bool(self.client_id and self.client_secret and self.refresh_token)


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Firebase Cloud Messaging (HTTP v1) sends."""

    service_account: str = ""  # path of the service-account JSON file
    fcm_url: str = "https://fcm.googleapis.com"
    iid_url: str = "https://iid.googleapis.com"  # topic management (batchAdd, batchRemove)
    project_id: str = ""  # empty: the service account's own project
    concurrency: int = 100  # requests in flight per process
    timeout: float = 10.0  # seconds per request
    deadline: float = 120.0  # seconds for one send to one device, every retry included
    max_attempts: int = 6
    retry_after_cap: float = 60.0  # a longer Retry-After is honoured only up to this
    quota_floor: float = 60.0  # seconds to wait after a project-wide QUOTA_EXCEEDED
    # false: HTTP/1.1 on aiohttp, a keep-alive pool of `concurrency` connections; true: HTTP/2
    # on httpx. HTTP/1.1 by default: it costs far less client CPU per message, and that is
    # what limits a Python sender (measured: docs/push.md, "Which protocol").
    http2: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    """All of Patchbay's settings."""

    server: ServerSettings = field(default_factory=ServerSettings)
    sql: PoolSettings = field(default_factory=PoolSettings)
    databases: tuple[DatabaseSettings, ...] = ()
    jobs: JobsSettings = field(default_factory=JobsSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    crm: CrmSettings = field(default_factory=CrmSettings)
    push: PushSettings = field(default_factory=PushSettings)

    def jobs_store_url(self) -> str:
        """The job store's URL, SQLite in the state directory unless one is set."""
        if self.jobs.store:
            return self.jobs.store
        return f"sqlite:///{(Path(self.server.state_dir) / 'jobs.db').resolve()}"

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
    unknown = set(raw) - {"server", "sql", "databases", "jobs", "webhooks", "crm", "push"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section")
    server = _dataclass_from(ServerSettings, raw.get("server", {}), "server")
    sql = _pool(raw.get("sql", {}), "sql")
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
    jobs = _dataclass_from(JobsSettings, raw.get("jobs", {}), "jobs")
    if jobs.store and urlsplit(jobs.store).scheme.lower() not in (
        "sqlite",
        "postgresql",
        "postgres",
    ):
        raise ConfigError("jobs.store: expected sqlite:///path or postgresql://...")
    for key in ("lease", "poll_interval"):
        if not getattr(jobs, key) > 0:
            raise ConfigError(f"jobs.{key}: must be more than 0")
    if jobs.retention_days != 0 and not jobs.retention_days >= MIN_RETENTION_DAYS:
        raise ConfigError(
            f"jobs.retention_days: 0 (keep everything) or at least {MIN_RETENTION_DAYS}, longer"
            " than senders redeliver (GitHub: 7 days), or a redelivery would be taken as new"
        )
    webhooks = _webhooks(raw.get("webhooks", {}))
    crm = _crm(raw.get("crm", {}), webhooks)
    return Settings(
        server=server,
        sql=sql,
        databases=tuple(databases),
        jobs=jobs,
        webhooks=webhooks,
        crm=crm,
        push=_push(raw.get("push", {})),
    )


def _crm(value: Any, webhooks: WebhookSettings) -> CrmSettings:
    crm = _dataclass_from(CrmSettings, value, "crm")
    for key in ("accounts_url", "api_url"):
        url = getattr(crm, key)
        if url and urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ConfigError(f"crm.{key}: expected an http:// or https:// URL, got {url!r}")
    if crm.timeout <= 0:
        raise ConfigError("crm.timeout: must be positive")
    if crm.concurrency < 1:
        raise ConfigError("crm.concurrency: must be at least 1")
    if not 0 < crm.max_file_bytes <= 104_857_600:
        raise ConfigError("crm.max_file_bytes: must be between 1 and 104857600 (Zoho's 100 MB)")
    # Checked here, at start-up, rather than when the first renewal fails an hour later.
    needing = [s.name for s in webhooks.sources if s.channel_id]
    if needing:
        for key in ("client_id", "client_secret", "refresh_token"):
            if not getattr(crm, key):
                raise ConfigError(
                    f"crm.{key}: required, since webhooks.sources.{needing[0]}.channel_id is set"
                )
    return crm


def _push(value: Any) -> PushSettings:
    push = _dataclass_from(PushSettings, value, "push")
    for key in ("fcm_url", "iid_url"):
        url = getattr(push, key)
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ConfigError(f"push.{key}: expected an http:// or https:// URL, got {url!r}")
    for key in ("concurrency", "max_attempts"):
        if getattr(push, key) < 1:
            raise ConfigError(f"push.{key}: must be at least 1")
    if push.timeout <= 0 or push.deadline <= 0:
        raise ConfigError("push.timeout and push.deadline: must be positive")
    return push


def _webhooks(value: Any) -> WebhookSettings:
    table = dict(_table(value, "webhooks"))
    sources = _table(table.pop("sources", {}), "webhooks.sources")
    hooks = _dataclass_from(WebhookSettings, table, "webhooks")
    if hooks.concurrency < 1:
        raise ConfigError("webhooks.concurrency: must be at least 1")
    if hooks.jitter > 1:
        raise ConfigError("webhooks.jitter: must be between 0 and 1")
    built = []
    for name, source in sources.items():
        where = f"webhooks.sources.{name}"
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ConfigError(f"{where}: a source name uses letters, digits, '_' and '-'")
        fields = dict(_table(source, where))
        if "provider" not in fields:
            raise ConfigError(f"{where}.provider: missing (github, standard, svix, stripe, ...)")
        built.append(_channel(_dataclass_from(SourceSettings, {**fields, "name": name}, where)))
    return dataclasses.replace(hooks, sources=tuple(built))


def _channel(source: SourceSettings) -> SourceSettings:
    """Validate a source's Zoho channel settings; its channel is then one verification accepts."""
    where = f"webhooks.sources.{source.name}"
    if not MIN_CHANNEL_LIFETIME <= source.channel_lifetime <= MAX_CHANNEL_LIFETIME:
        raise ConfigError(
            f"{where}.channel_lifetime: must be between {MIN_CHANNEL_LIFETIME:g} seconds and "
            f"{MAX_CHANNEL_LIFETIME:g} (one week, Zoho's limit), got {source.channel_lifetime:g}"
        )
    if not source.channel_id:
        for key in ("events", "notify_url"):
            if getattr(source, key):
                raise ConfigError(f"{where}.{key}: needs channel_id as well")
        return source
    if source.provider != "zoho":
        raise ConfigError(f"{where}.channel_id: only a zoho source has a notification channel")
    if not source.channel_id.isascii() or not source.channel_id.isdigit():
        raise ConfigError(f"{where}.channel_id: expected a number, got {source.channel_id!r}")
    if not source.events:
        raise ConfigError(f'{where}.events: required with channel_id (e.g. ["Leads.all"])')
    if len(source.events) > MAX_CHANNEL_EVENTS:
        raise ConfigError(f"{where}.events: at most {MAX_CHANNEL_EVENTS} events per channel")
    for event in source.events:
        module, dot, operation = event.rpartition(".")
        if not dot or not module or operation not in CHANNEL_OPERATIONS:
            raise ConfigError(
                f"{where}.events: {event!r} is not Module.operation "
                f"(operation one of {', '.join(CHANNEL_OPERATIONS)})"
            )
    url = urlsplit(source.notify_url)
    if url.scheme.lower() not in ("http", "https") or not url.netloc:
        raise ConfigError(f"{where}.notify_url: expected the https:// URL Zoho posts to")
    if not source.secrets:
        raise ConfigError(f"{where}.secrets: the channel's token is the first secret; none is set")
    if len(source.secrets[0]) > MAX_CHANNEL_TOKEN:
        raise ConfigError(
            f"{where}.secrets: the first secret is the channel's token, at most "
            f"{MAX_CHANNEL_TOKEN} characters for Zoho"
        )
    # Notifications of the channel we subscribe must pass verification, which checks
    # ``channels`` when it is set; a rotation may list older channels there too.
    if not source.channels:
        return dataclasses.replace(source, channels=(source.channel_id,))
    if source.channel_id not in source.channels:
        raise ConfigError(f"{where}.channels: must include channel_id {source.channel_id!r}")
    return source


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
    return DatabaseSettings(name=name, urls=tuple(urls), pool=_pool(merged, where))


def _pool(values: Any, where: str) -> PoolSettings:
    pool = _dataclass_from(PoolSettings, values, where)
    for key in ("pool_size", "pipeline_depth", "failures_to_down"):
        if getattr(pool, key) < 1:
            raise ConfigError(f"{where}.{key}: must be at least 1")
    if not pool.probe_interval > 0:
        raise ConfigError(f"{where}.probe_interval: must be positive")
    return pool


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
    if origin is tuple and get_args(hint) == (float, Ellipsis):
        if not isinstance(value, list | tuple) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in value
        ):
            raise ConfigError(f"{where}: expected a list of seconds")
        return tuple(float(v) for v in value)
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
