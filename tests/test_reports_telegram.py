"""Problem reports end to end through the real PTB Application against the fake Bot API server:
a resident files a report with a pin and a photo (downloaded into MEDIA_DIR), a second resident
is offered the nearby report and follows it, staff triage it with buttons, the dispatcher delivers
the status notifications to each in their own language, the "solved?" buttons reopen and rate it,
and a non-staff account is refused."""
from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from sqlmodel import select

from bot.app import add_configured_channels
from bot.dispatcher import Dispatcher
from conversations.i18n import t_in
from storage import reports as rp
from storage.db import transaction
from storage.models import AuditLog, ChannelIdentity, Staff
from tests.media_support import plain_jpeg, stored_as
from tests.support.telegram import TelegramChat

CODE = re.compile(r"BCA-\d{4}-\d{6}")
PIN = (38.38500, 27.17500)
NEAR = (38.38530, 27.17520)
PHOTO = plain_jpeg(160, 120, (90, 90, 80))
PHOTO_2 = plain_jpeg(160, 120, (40, 120, 60))    # what a follower adds
AYSE, JOHN, BOSS, EVE = 7101, 7102, 7103, 7104




def texts(calls) -> str:
    return "\n".join(c.text or c.params.get("caption") or "" for c in calls)


def buttons(calls) -> list[str]:
    return [b["callback_data"] for c in calls for row in (c.params.get("reply_markup") or {}).get("inline_keyboard", [])
            for b in row]


async def wait_until(predicate, timeout: float = 10, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def delivered_to(tg, chat_id: int, needle: str):
    """The messages delivered to a chat whose text or caption contains needle (edits of a tapped
    message, which repeat its text, are not deliveries)."""
    return [c for c in tg.sent_messages(chat_id) if c.ok and c.method in ("sendMessage", "sendPhoto")
            and needle in (c.text or c.params.get("caption") or "")]


async def test_reports_through_telegram(make_app, tg, db_url):
    app = make_app(database_url=db_url, telegram_bot_token=tg.token, telegram_api_url=tg.root)
    add_configured_channels(app)
    channel = app.channels["telegram"]
    await channel.start()
    dispatcher = Dispatcher(app, app.senders, "test-reports", app.settings)
    try:
        await _scenario(app, tg, channel, dispatcher)
    finally:
        await dispatcher.stop()
        await channel.stop()


async def _scenario(app, tg, channel, dispatcher) -> None:
    ayse, john = TelegramChat(tg, channel, AYSE, "tr"), TelegramChat(tg, channel, JOHN, "en")
    boss, eve = TelegramChat(tg, channel, BOSS, "tr"), TelegramChat(tg, channel, EVE, "tr")
    for chat in (ayse, john, boss, eve):
        await chat.onboard()
    with transaction(app.db) as db:
        db.add(Staff(telegram_id=str(BOSS), name="Zabıta Ekibi"))

    # -- Ayşe files a report: category button, a pin with the one-tap location button, its mahalle
    #    confirmed in one tap, description, photo, summary, confirm
    calls = await ayse.say("/bildir")
    assert "c:road" in buttons(calls)
    calls = await ayse.tap("c:road")
    asked = calls[-1]                                                # the location question
    assert asked.text == t_in("tr", "report.location_prompt")
    assert asked.params["reply_markup"] == {
        "keyboard": [[{"text": "📍 Konumumu gönder", "request_location": True}],
                     [{"text": t_in("tr", "report.location_list")}]],
        "resize_keyboard": True, "one_time_keyboard": True}
    calls = await ayse.pin(*PIN)
    pin_question = [c for c in calls if c.method == "sendMessage"][-1]
    assert pin_question.text == t_in("tr", "report.pin_mahalle", mahalle="Dumlupınar")
    assert pin_question.params["reply_markup"] == {"remove_keyboard": True}   # the location button goes
    edits = [c for c in tg.calls if c.method == "editMessageReplyMarkup" and c.ok]   # then its buttons
    assert [c.params["message_id"] for c in edits] == [pin_question.response["result"]["message_id"]]
    assert buttons(edits) == ["yes", "list"]
    calls = await ayse.tap("yes")
    assert texts(calls) == t_in("tr", "report.describe_prompt", category="Yol ve kaldırım")
    await ayse.say("Menderes Caddesi'nde derin bir çukur var, araçlar zarar görüyor.")
    calls = await ayse.photo(PHOTO)
    assert texts(calls) == (t_in("tr", "report.photo_saved", n=1, max=3) + "\n"
                            + "2 fotoğraf daha ekleyebilir ya da ✅ Devam düğmesine basabilirsiniz.")
    assert [b["text"] for row in calls[-1].params["reply_markup"]["inline_keyboard"] for b in row] == ["✅ Devam"]
    calls = await ayse.tap("done")
    assert "Yol ve kaldırım" in texts(calls) and "confirm" in buttons(calls)
    calls = await ayse.tap("confirm")
    code = CODE.search(texts(calls)).group(0)
    assert calls[0].text == (t_in("tr", "report.saved", code=code, command="/bildirimlerim") + "\n"
                            + "⏱ Bu tür bildirimlere genellikle 5 iş günü içinde yanıt veriyoruz.")
    name, cleaned = stored_as(PHOTO)
    stored = app.settings.media_dir / name
    assert name == f"{hashlib.sha256(cleaned).hexdigest()}.jpg"    # content-addressed in MEDIA_DIR
    assert stored.exists() and stored.read_bytes() == cleaned      # as re-encoded, without metadata
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert (report.latitude, report.longitude) == PIN and report.channel == "telegram"
        assert report.mahalle == "dumlupinar"
        assert [m.path for m in rp.media_of(db, report.id, kind="photo")] == [str(stored)]

    # -- John reports the same pothole nearby: before he writes anything he is shown Ayşe's report
    #    with its description and photo; he follows it, and what he writes and sends goes to staff
    await john.say("/report")
    await john.say("roads")
    await john.pin(*NEAR)
    calls = await john.tap("yes")
    photos = [c for c in calls if c.method == "sendPhoto"]
    assert photos and code in photos[0].params.get("caption", "")
    assert "Menderes Caddesi'nde derin bir çukur var" in photos[0].params["caption"]
    assert f"f:{code}" in buttons(calls) and "file" in buttons(calls)
    calls = await john.tap(f"f:{code}")
    assert texts(calls) == (t_in("en", "report.followed", code=code) + "\n"
                            + t_in("en", "report.support_prompt", code=code))
    await john.photo(PHOTO_2)
    calls = await john.say("A cyclist fell here yesterday")
    assert texts(calls).startswith(t_in("en", "report.support_saved", code=code))
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert rp.count_reports(db) == 1 and report.supporters == 1
        comment = [e for e in rp.history_of(db, report.id) if e.kind == "supporter_comment"]
        assert [(e.note, e.actor.startswith("resident:")) for e in comment] == [("A cyclist fell here yesterday", True)]
        added = [m for m in rp.media_of(db, report.id, kind="photo") if m.event_id == comment[0].id]
        assert len(added) == 1 and Path(added[0].path).name == stored_as(PHOTO_2)[0]

    # -- a resident who is not staff is refused, and the attempt audited
    calls = await eve.say("/raporlar")
    assert t_in("tr", "staff.refused") in texts(calls)
    with transaction(app.db) as db:
        eve_id = db.exec(select(ChannelIdentity.resident_id).where(ChannelIdentity.address == str(EVE))).one()
        assert db.exec(select(AuditLog).where(AuditLog.action == "staff.refused",
                                              AuditLog.actor == f"resident:{eve_id}")).first()   # never the chat id

    # -- staff triage with buttons: the photo as a photo, the pin as a location
    calls = await boss.say("/raporlar")
    assert "st:new" in buttons(calls)
    calls = await boss.tap("st:new")
    assert f"r:{code}" in buttons(calls)
    calls = await boss.tap(f"r:{code}")
    assert any(c.method == "sendPhoto" for c in calls)
    venue = [c for c in calls if c.method in ("sendVenue", "sendLocation")]
    assert venue and float(venue[0].params["latitude"]) == PIN[0]
    assert "to:in_progress" in buttons(calls)
    await boss.tap("to:in_progress")
    calls = await boss.say("Ekip yarın sabah gelecek")
    assert code in texts(calls)

    # -- the dispatcher delivers the notifications, each in the resident's language
    assert await dispatcher.start()
    await wait_until(lambda: delivered_to(tg, AYSE, "üzerinde çalışılıyor")
                     and delivered_to(tg, JOHN, "is being worked on"), what="in-progress notifications")
    assert "Ekip yarın sabah gelecek" in delivered_to(tg, AYSE, "üzerinde çalışılıyor")[0].text

    await boss.tap("to:resolved")
    await boss.tap("none")
    await wait_until(lambda: delivered_to(tg, AYSE, "Sorun çözüldü mü?")
                     and delivered_to(tg, JOHN, "Is the problem solved?"), what="resolved notifications")
    asked = delivered_to(tg, AYSE, "Sorun çözüldü mü?")[-1]
    assert buttons([asked]) == [f"rs:yes:{code}", f"rs:no:{code}"]

    # -- Ayşe says no from the notification while elsewhere: reopened, staff told
    await ayse.say("/raporlarim")
    calls = await ayse.tap(f"rs:no:{code}", message_id=asked.response["result"]["message_id"])
    assert t_in("tr", "report.reopened", code=code) in texts(calls)
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.status == "in_progress" and report.reopened_count == 1
    await wait_until(lambda: delivered_to(tg, BOSS, "yeniden açıldı"), what="staff told of the reopening")

    # -- resolved again; both say yes and rate with buttons
    await boss.say(code)
    await boss.tap("to:resolved")
    await boss.tap("none")
    await wait_until(lambda: len(delivered_to(tg, JOHN, "Is the problem solved?")) >= 2, what="second resolution")
    asked_john = delivered_to(tg, JOHN, "Is the problem solved?")[-1]
    calls = await john.tap(f"rs:yes:{code}", message_id=asked_john.response["result"]["message_id"])
    assert f"rr:5:{code}" in buttons(calls)
    calls = await john.tap(f"rr:3:{code}")
    assert "3/5" in texts(calls)
    await wait_until(lambda: len(delivered_to(tg, AYSE, "Sorun çözüldü mü?")) >= 2, what="second resolution (tr)")
    asked = delivered_to(tg, AYSE, "Sorun çözüldü mü?")[-1]
    await ayse.tap(f"rs:yes:{code}", message_id=asked.response["result"]["message_id"])
    calls = await ayse.tap(f"rr:5:{code}")
    assert "5/5" in texts(calls)
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.status == "resolved" and report.rating == 5     # the reporter's rating
        kinds = [e.kind for e in rp.history_of(db, report.id)]
        assert kinds.count("rated") == 2 and "reopened" in kinds

    # -- /raporlarim: the list and the detail with the photo
    calls = await ayse.say("/raporlarim")
    assert f"r:{code}" in buttons(calls)
    calls = await ayse.tap(f"r:{code}")
    assert any(c.method == "sendPhoto" for c in calls)
    assert "Çözüldü" in texts(calls) and "İşlemde" in texts(calls)
