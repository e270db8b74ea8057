"""Handlers registered with decorators on explicit ``Router`` objects.

    router = Router()

    @router.on("pull_request.opened")
    async def greet(ctx: Context) -> None: ...

    @router.on("*", source="gh")
    def audit(ctx: Context) -> None: ...

Event names are the normalised ones (``pull_request.opened``, ``invoice.paid``,
``orders.create``); a pattern may end in ``.*`` or be ``*``. Every handler has a stable name,
``module:qualname``, which is what the job store records, so a run survives a restart and is
found again in the new process. ``Router.from_module`` keeps the blog-style module of functions
(``pull_request_opened``) working: a function matches the event whose dots become underscores.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import structlog

Handler = Callable[["Context"], Awaitable[None] | None]
KeyFunction = Callable[["Context"], str | None]
_H = TypeVar("_H", bound=Handler)


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a handler gets: one delivery, and which attempt this is (1 for the first)."""

    source: str
    event: str
    delivery_key: str
    payload: Any
    body: bytes
    headers: Mapping[str, str]
    attempt: int
    received_at: float
    _log: Any = field(default=None, compare=False, repr=False)

    @property
    def log(self) -> Any:
        """A logger bound to this delivery (made on first use: most handlers never log)."""
        if self._log is None:
            bound = structlog.get_logger("patchbay.webhooks").bind(
                source=self.source, hook=self.event, delivery=self.delivery_key
            )
            object.__setattr__(self, "_log", bound)
        return self._log


@dataclass(frozen=True, slots=True)
class Route:
    """One registration: which events and source it takes, and how its runs behave."""

    name: str
    handler: Handler
    pattern: str
    source: str | None = None
    ordering_key: KeyFunction | None = None
    timeout: float | None = None
    retry_delays: tuple[float, ...] | None = None
    by_function_name: bool = False  # from_module: the event with dots as underscores
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "regex", _compile(self.pattern))

    def matches(self, source: str, event: str) -> bool:
        """Whether a delivery of ``event`` from ``source`` goes to this handler."""
        if self.source is not None and self.source != source:
            return False
        if self.by_function_name:
            return event.replace(".", "_").replace("-", "_") == self.pattern
        return self.regex.fullmatch(event) is not None

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (else it runs on a thread)."""
        return inspect.iscoroutinefunction(self.handler)


class Router:
    """An ordered set of routes; routers compose: ``Router(github_router, stripe_router)``."""

    def __init__(self, *routers: Router) -> None:
        self._routes: list[Route] = []
        self._names: dict[str, Handler] = {}
        for router in routers:
            for route in router.routes:
                self._add(route)

    @property
    def routes(self) -> tuple[Route, ...]:
        """Every registration, in order."""
        return tuple(self._routes)

    def on(
        self,
        event: str,
        *,
        source: str | None = None,
        ordering_key: KeyFunction | None = None,
        timeout: float | None = None,
        retry_delays: tuple[float, ...] | None = None,
    ) -> Callable[[_H], _H]:
        """Register the decorated function for ``event`` (``"issues.*"`` and ``"*"`` too).

        ``ordering_key`` opts in to ordering: runs of this handler whose key is equal run one at
        a time, in the order their deliveries arrived, even while an earlier one is retried.
        """
        _check_pattern(event)

        def register(handler: _H) -> _H:
            self._add(
                Route(
                    name=handler_name(handler),
                    handler=handler,
                    pattern=event,
                    source=source,
                    ordering_key=ordering_key,
                    timeout=timeout,
                    retry_delays=retry_delays,
                )
            )
            return handler

        return register

    @classmethod
    def from_module(cls, module: ModuleType, *, source: str | None = None) -> Router:
        """A router over a module's public functions, each named after its event.

        ``def pull_request_opened(ctx)`` takes ``pull_request.opened``; functions imported from
        other modules are left out.
        """
        router = cls()
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or not inspect.isfunction(value):
                continue
            if value.__module__ != module.__name__:
                continue
            router._add(
                Route(
                    name=handler_name(value),
                    handler=value,
                    pattern=attribute,
                    source=source,
                    by_function_name=True,
                )
            )
        return router

    def match(self, source: str, event: str) -> list[Route]:
        """The routes a delivery goes to: registration order, each handler once."""
        seen: set[str] = set()
        found = []
        for route in self._routes:
            if route.name not in seen and route.matches(source, event):
                seen.add(route.name)
                found.append(route)
        return found

    def route(self, name: str) -> Route | None:
        """The first route of the handler called ``name``."""
        for route in self._routes:
            if route.name == name:
                return route
        return None

    def _add(self, route: Route) -> None:
        known = self._names.get(route.name)
        if known is not None and known is not route.handler:
            raise ValueError(f"two different handlers are both named {route.name}")
        self._names[route.name] = route.handler
        self._routes.append(route)


def handler_name(handler: Callable[..., Any]) -> str:
    """The stable name a handler's runs are stored under."""
    module = getattr(handler, "__module__", None) or "?"
    qualname = getattr(handler, "__qualname__", None) or repr(handler)
    return f"{module}:{qualname}"


_EVENT = re.compile(r"[A-Za-z0-9_\-./:]+")


def _check_pattern(pattern: str) -> None:
    if pattern == "*":
        return
    body = pattern.removesuffix(".*")
    if not body or not _EVENT.fullmatch(body) or "*" in body:
        raise ValueError(f"{pattern!r} is not an event name, 'name.*' or '*'")


def _compile(pattern: str) -> re.Pattern[str]:
    if pattern == "*":
        return re.compile(r".*", re.DOTALL)
    if pattern.endswith(".*"):
        return re.compile(re.escape(pattern[:-2]) + r"\..+", re.DOTALL)
    return re.compile(re.escape(pattern))
