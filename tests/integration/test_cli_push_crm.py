"""``patchbay push send`` and ``patchbay crm attach`` as a user runs them, against the emulators."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from patchbay.emulators.fcm import FcmEmulator
from patchbay.emulators.keys import service_account
from patchbay.emulators.serve import serve_in_thread
from patchbay.emulators.zoho import ZohoEmulator
from tests.conftest import free_port


def patchbay(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ``patchbay`` command."""
    return subprocess.run(
        [sys.executable, "-m", "patchbay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_push_send(tmp_path: Path) -> None:
    """One token: the message name and exit 0; a dead one: its FCM code and exit 1; a file."""
    emulator = FcmEmulator()
    emulator.unregister_prefix("gone-")
    with serve_in_thread(emulator) as url:
        info, _ = service_account(f"{url}/token")
        (tmp_path / "sa.json").write_text(json.dumps(info))
        config = tmp_path / "push.toml"
        config.write_text(f'[push]\nservice_account = "sa.json"\nfcm_url = "{url}"\n')
        options = ("push", "send", "--config", str(config), "--title", "Hi", "--body", "there")
        sent = patchbay(tmp_path, *options, "--token", "device-1", "--data", "k=v")
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.strip().startswith("projects/demo-project/messages/")
        gone = patchbay(tmp_path, *options, "--token", "gone-1")
        assert gone.returncode == 1
        assert "UNREGISTERED" in gone.stderr
        (tmp_path / "tokens.txt").write_text("a\nb\ngone-2\nc\n")
        many = patchbay(tmp_path, *options, "--tokens", "tokens.txt")
        assert many.returncode == 1  # one token is dead
        assert "1 dead_token, 3 sent" in many.stdout
        assert "dead token: gone-2" in many.stdout
    message = emulator.ledger[0].message
    assert message["notification"] == {"title": "Hi", "body": "there"}
    assert message["data"] == {"k": "v"}
    assert sorted(m.target for m in emulator.ledger) == ["a", "b", "c", "device-1"]


def test_crm_attach(tmp_path: Path) -> None:
    """A file: the attachment id and exit 0; 21 MB: the seed's message before any request."""
    port = free_port()
    emulator = ZohoEmulator(api_domain=f"http://127.0.0.1:{port}")
    with serve_in_thread(emulator, port=port) as url:
        config = tmp_path / "crm.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [crm]
                client_id = "{emulator.client_id}"
                client_secret = "{emulator.client_secret}"
                refresh_token = "{emulator.refresh_token}"
                accounts_url = "{url}"
                api_url = "{url}"
                """
            )
        )
        (tmp_path / "report.pdf").write_bytes(b"%PDF-1.4 " * 1000)
        done = patchbay(
            tmp_path, "crm", "attach", "--config", str(config), "Leads", "42", "report.pdf"
        )
        assert done.returncode == 0, done.stderr
        assert "uploading" in done.stderr  # the progress bar, on stderr
        [stored] = emulator.stored("Leads", "42")
        assert done.stdout.strip() == stored.id
        with (tmp_path / "big.bin").open("wb") as big:
            big.truncate(21 * 1000 * 1000)
        calls = len(emulator.calls)
        refused = patchbay(
            tmp_path, "crm", "attach", "--config", str(config), "Leads", "42", "big.bin"
        )
        assert refused.returncode != 0
        assert refused.stderr.strip() == "patchbay: File size should not exceed 20 MB"
        assert len(emulator.calls) == calls
        listed = patchbay(tmp_path, "crm", "list", "--config", str(config), "Leads", "42")
        assert stored.id in listed.stdout
