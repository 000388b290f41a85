"""A terminal resident hears what others queue for them (a status change, a reminder) while chatting."""
from __future__ import annotations

import subprocess
import sys
import time

from sqlmodel import select

from conversations.i18n import translator
from conversations.messages import Outbound
from conversations.notify import notify_resident
from storage.db import make_engine, transaction
from storage.models import ChannelIdentity
from tests import conftest

tr = translator("tr")


def test_a_queued_notification_is_printed_in_the_running_chat(tmp_path):
    db_path = tmp_path / "katilim.db"
    env = conftest.test_env(DATABASE_URL=f"sqlite:///{db_path}", MEDIA_DIR=str(tmp_path / "media"))
    chat = subprocess.Popen([sys.executable, "-m", "bot.cli", "chat", "--as", "ayse"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path, text=True)
    try:
        for line in ("merhaba", "1", "1", "kozagac"):
            chat.stdin.write(line + "\n")
            chat.stdin.flush()
        db = make_engine(f"sqlite:///{db_path}")
        deadline = time.monotonic() + 30
        resident_id = None
        while resident_id is None and time.monotonic() < deadline:
            try:
                with transaction(db) as s:
                    ident = s.exec(select(ChannelIdentity).where(ChannelIdentity.address == "ayse")).first()
                    resident_id = ident.resident_id if ident else None
            except Exception:  # noqa: BLE001  (tables not there yet)
                pass
            time.sleep(0.2)
        assert resident_id is not None
        with transaction(db) as s:
            assert notify_resident(s, resident_id, lambda t, lang: Outbound(text="🔔 " + t("menu.title"))) == 1
        time.sleep(3)  # the chat prints queued messages every second
        db.dispose()
    finally:
        out, err = chat.communicate("/cikis\n", timeout=60)
    assert chat.returncode == 0, err
    assert "🔔 " + tr("menu.title") in out
    assert out.count("🔔 ") == 1
