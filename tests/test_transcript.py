"""One complete resident day on the terminal, as the README tells it: Ayşe opens `katilim chat`,
signs up, reports a pothole, hears that it was fixed and answers, registers for an event and gets
its reminder. Driven through the real terminal channel (tests/terminal.py: handlers/console.py
in-process); the clerk works from the real CLI (a subprocess on the same database). Each step is
what Ayşe types and what her screen shows."""
from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta

from bot.participation_jobs import scan_reminders
from conversations.domain import events as event_ops
from conversations.i18n import translator
from conversations.permissions import Actor
from storage.db import transaction, utcnow
from tests.conftest import test_env as katilim_env
from tests.terminal import Terminal
from tests.test_console import in_order as shows  # the screen shows these lines, in this order

tr = translator("tr")


def clerk(sqlite_url: str, tmp_path, *args: str) -> str:
    """The municipality's clerk at a desk: the real `katilim` command on the same database."""
    done = subprocess.run([sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, timeout=120,
                          env=katilim_env(DATABASE_URL=sqlite_url, MEDIA_DIR=str(tmp_path / "media")))
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_a_resident_day_on_the_terminal(make_app, sqlite_url, tmp_path):
    app = make_app(katilim_reminder_offsets="2s")
    ayse = Terminal(app, "ayse")

    # -- Ayşe opens `katilim chat --as ayse`: greeted at once, in every language
    shows(await ayse.open(),
          tr("onboarding.choose_language"), "  1 · ✓ Türkçe", "  2 · English", "  3 · العربية")
    shows(await ayse.type("1"),                                   # Türkçe
          tr("notice.accept_all"))
    shows(await ayse.type("1"),                                   # ✅ Hepsine izin ver
          tr("onboarding.thanks", purposes="Sorun bildirimleri, Gönüllülük, Hatırlatmalar, Duyurular"),
          tr("mahalle.prompt"))
    shows(await ayse.type("yildiz mah."),                         # the mahalle as Turks write it
          tr("mahalle.saved", mahalle="Yıldız"), tr("menu.title"))

    # -- a pothole on her street: what kind, where (her pin's mahalle confirmed in one tap), what
    shows(await ayse.type("/bildir"), "  1 · Yol ve kaldırım")
    shows(await ayse.type("1"), "📍 Sorun nerede?", "  1 · 📍 Mahallem: Yıldız")
    shows(await ayse.type("/konum 38.3729 27.1797"),
          "📍 Konumu aldık: Yıldız Mahallesinde görünüyor. Doğru mu?", "  1 · ✅ Evet, Yıldız")
    shows(await ayse.type("1"), "🏷 Yol ve kaldırım")              # ✅ Evet, Yıldız
    shows(await ayse.type("Kaldırımdaki çukur yüzünden yaşlılar düşüyor, lütfen onarın."),
          "  1 · Fotoğrafsız devam")
    shows(await ayse.type("1"),                                   # 📷 Fotoğrafsız devam
          "📝 Açıklama: Kaldırımdaki çukur yüzünden yaşlılar düşüyor, lütfen onarın.",
          "📍 Konum: haritada işaretlenen nokta (38.37290, 27.17970) · Yıldız Mahallesi", "  1 · ✅ Gönder")
    code = "BCA-2026-000001"
    shows(await ayse.type("1"),                                   # ✅ Gönder
          f"✅ Bildiriminiz alındı. Takip kodunuz: {code}", "/bildirimlerim",
          "⏱ Bu tür bildirimlere genellikle 5 iş günü içinde yanıt veriyoruz.", tr("menu.title"))

    # -- the clerk marks it resolved; the news reaches her chat; she says yes and rates it
    clerk(sqlite_url, tmp_path, "reports", "set-status", code, "resolved", "--note", "Kaldırım onarıldı.")
    news = await ayse.wait()
    shows(news, tr("report.notify.resolved", code=code, category="Yol ve kaldırım"),
          "  1 · " + tr("report.notify.resolved_yes"), "  2 · " + tr("report.notify.resolved_no"))
    shows(await ayse.type("Evet"),                                # answers the question that just arrived
          tr("report.rate_prompt", code=code), "  5 · 5 ⭐")
    shows(await ayse.type("5"), tr("report.rated", rating=5, code=code))
    page = await ayse.type(f"/bildirimlerim {code}")
    shows(page, f"{code}", tr("report.detail_rating", rating=5), "  1 · " + tr("report.detail_reopen"))

    # -- an event this evening: she registers, gets its calendar file and, before it starts, the reminder
    with transaction(app.db) as db:   # the clerk adds it (as `katilim events add` does)
        starts = utcnow() + timedelta(seconds=5)
        event_ops.create_event(db, Actor.cli("cli:clerk"), title={"tr": "Yıldız Mahalle Buluşması"},
                               starts_at=starts, ends_at=starts + timedelta(hours=2), place="Yıldız Muhtarlığı")
    await ayse.type("/menu")
    shows(await ayse.type("/etkinlikler"), "• Yıldız Mahalle Buluşması — ")
    shows(await ayse.type("1"), "Yıldız Muhtarlığı", tr("event.rsvp"))
    registered = await ayse.type(tr("event.rsvp"))
    folder = tmp_path / "media" / "console" / str(ayse.resident_id)
    shows(registered, "Kaydınız alındı: Yıldız Mahalle Buluşması", f"📎 {folder / 'etkinlik-1.ics'}")
    assert (folder / "etkinlik-1.ics").read_text(encoding="utf-8").startswith("BEGIN:VCALENDAR")
    shows(await ayse.type("/etkinlikler"), "• ✓ Yıldız Mahalle Buluşması — ", tr("event.list.marks"))
    await asyncio.sleep(max(0.0, (starts - timedelta(seconds=2) - utcnow()).total_seconds()) + 0.2)
    assert scan_reminders(app).sent == 1                          # the scheduler's "reminders" job
    shows(await ayse.wait(), "⏰ Hatırlatma: Yıldız Mahalle Buluşması")
