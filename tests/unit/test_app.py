"""The application's own pieces that need no server."""

from __future__ import annotations

from patchbay.app import redacted_args


def test_stats_args_hide_tokens_and_passwords() -> None:
    """/stats/args never shows a token or a database password."""
    args = redacted_args(
        [
            "patchbay",
            "serve",
            "--token",
            "t1",
            "--token=t2",
            "--db",
            "a=mysql://u:pw@h/db,postgresql://v:pw2@h/db",
        ]
    )
    assert "t1" not in args and "t2" not in args and "pw" not in args
    assert "mysql://u:***@h/db,postgresql://v:***@h/db" in args
