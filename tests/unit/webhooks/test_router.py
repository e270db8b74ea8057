"""The handler router: patterns, sources, names, composition, the module adapter."""

from __future__ import annotations

import types

import pytest

from patchbay.webhooks import Context, Router
from patchbay.webhooks.router import handler_name


def opened(ctx: Context) -> None:
    """A sync handler."""


async def anything(ctx: Context) -> None:
    """An async handler."""


def test_exact_event_matches_only_itself() -> None:
    """An exact pattern takes its event and no other."""
    router = Router()
    router.on("pull_request.opened")(opened)
    assert [r.handler for r in router.match("gh", "pull_request.opened")] == [opened]
    assert router.match("gh", "pull_request.closed") == []
    assert router.match("gh", "pull_request") == []


def test_wildcards() -> None:
    """``name.*`` takes every action of an event; ``*`` takes everything."""
    router = Router()
    router.on("issues.*")(opened)
    router.on("*")(anything)
    assert [r.handler for r in router.match("gh", "issues.opened")] == [opened, anything]
    assert [r.handler for r in router.match("gh", "issues")] == [anything]
    assert [r.handler for r in router.match("gh", "issuesx.opened")] == [anything]


def test_source_limits_a_route() -> None:
    """``source=`` keeps a handler to one configured source."""
    router = Router()
    router.on("*", source="gh")(anything)
    assert router.match("gh", "push")
    assert router.match("stripe", "push") == []


def test_one_run_per_handler_even_when_two_patterns_match() -> None:
    """A handler registered twice for matching patterns runs once per delivery."""
    router = Router()
    router.on("issues.opened")(opened)
    router.on("issues.*")(opened)
    assert len(router.match("gh", "issues.opened")) == 1


def test_names_are_module_and_qualname() -> None:
    """Runs are stored under ``module:qualname``, stable across restarts."""
    assert handler_name(opened) == f"{__name__}:opened"
    router = Router()
    router.on("push")(opened)
    assert router.route(f"{__name__}:opened") is not None
    assert router.route("nope:nothing") is None


def test_two_handlers_with_one_name_are_refused() -> None:
    """Two different functions under one name would share runs: refuse at registration."""
    router = Router()

    def make() -> types.FunctionType:
        def same(ctx: Context) -> None:
            """A closure."""

        return same  # type: ignore[return-value]

    router.on("a")(make())
    with pytest.raises(ValueError, match="named"):
        router.on("b")(make())


def test_bad_patterns_are_refused() -> None:
    """A pattern with a wildcard in the middle or nothing in it is an error at registration."""
    router = Router()
    for bad in ("", "a.*.b", "*.x", ".*", "a b"):
        with pytest.raises(ValueError, match="event name"):
            router.on(bad)


def test_routers_compose_in_order() -> None:
    """``Router(a, b)`` has a's routes, then b's."""
    first, second = Router(), Router()
    first.on("push")(opened)
    second.on("push")(anything)
    assert [r.handler for r in Router(first, second).match("gh", "push")] == [opened, anything]


def test_from_module_maps_dots_to_underscores() -> None:
    """The blog's module of functions: ``pull_request_opened`` takes ``pull_request.opened``."""
    module = types.ModuleType("hooks_module")

    def pull_request_opened(ctx: Context) -> None:
        """Runs on pull_request.opened."""

    def _private(ctx: Context) -> None:
        """Never a handler."""

    for function in (pull_request_opened, _private):
        function.__module__ = "hooks_module"
        setattr(module, function.__name__, function)
    module.imported = opened  # type: ignore[attr-defined]
    router = Router.from_module(module)
    assert [r.handler for r in router.match("gh", "pull_request.opened")] == [pull_request_opened]
    assert router.match("gh", "pull_request.closed") == []
    assert router.match("gh", "_private") == []
    assert router.match("gh", "opened") == []


def test_async_and_sync_are_told_apart() -> None:
    """Async handlers run on the loop, sync ones on a thread."""
    router = Router()
    router.on("a")(anything)
    router.on("b")(opened)
    assert router.match("gh", "a")[0].is_async
    assert not router.match("gh", "b")[0].is_async


def test_context_binds_a_logger() -> None:
    """Every context carries a logger bound to its delivery."""
    ctx = Context("gh", "push", "k1", {}, b"{}", {}, 1, 0.0)
    assert ctx.log is not None
