"""WhatsApp through Twilio: signed webhooks posted to the running HTTP server (bot.http.serve_http)
as Twilio posts them, replies received by the fake Twilio REST API (tests/fakes/twilio_api.py)
through the real twilio-python client; status callbacks, the 24-hour window and its templates,
Twilio's error codes, signed file links, and linking a Telegram and a WhatsApp conversation
(the real python-telegram-bot Application against tests/fakes/telegram_api.py)."""
from __future__ import annotations

import hashlib
import json
import re
import socket
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func, update
from sqlmodel import Session, select

from bot.app import add_configured_channels
from bot.http import serve_http
from conversations.domain import reports as reports_domain
from conversations.i18n import t_in, translator
from conversations.messages import Attachment, Choice, Kind, Outbound
from conversations.notify import notify_resident
from conversations.permissions import Actor
from handlers.delivery import SendError, SendFailure
from handlers.whatsapp import (
    FILES_PATH,
    STATUS_PATH,
    WEBHOOK_PATH,
    OutboundFiles,
    WhatsAppSender,
    normalize_address,
    render,
    split_body,
    to_inbound,
)
from storage.db import transaction, utcnow
from storage.linking import LinkCode, normalize_phone
from storage.models import (
    ChannelIdentity,
    ConsentRecord,
    ConversationSession,
    OutboxMessage,
    ProcessedInbound,
    Resident,
)
from tests.fakes.twilio_api import FakeTwilioServer, signature
from tests.media_support import plain_jpeg, stored_as
from tests.support.chat import Chat

AYSE = "whatsapp:+905551112233"
MEHMET = "whatsapp:+905554445566"
SENDER = "whatsapp:+905550000000"
TEMPLATE = "HX" + "1" * 32
JPEG = plain_jpeg(100, 75, (160, 40, 40))


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def twilio():
    with FakeTwilioServer() as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WA:
    """The running app (channels started, HTTP server up) and helpers to talk to it as Twilio."""

    def __init__(self, app, server, twilio: FakeTwilioServer) -> None:
        self.app, self.server, self.twilio = app, server, twilio
        self.channel = app.channels["whatsapp"]
        self.base = app.settings.public_base_url
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10)

    async def close(self) -> None:
        await self.http.aclose()
        for channel in self.app.channels.values():
            await channel.stop()
        self.server.should_exit = True
        await self.server.wait_closed()

    async def post(self, path: str, params: dict, *, sign: bool = True, token: str | None = None,
                   url: str | None = None, **kw) -> httpx.Response:
        headers = {}
        if sign:
            headers["X-Twilio-Signature"] = signature(token or self.twilio.auth_token, url or self.base + path, params)
        return await self.http.post(path, data=params, headers=headers, **kw)

    async def say(self, body: str = "", address: str = AYSE, **extra) -> list:
        """A resident's message; returns the messages sent back to them."""
        before = len(self.twilio.calls)
        response = await self.post(WEBHOOK_PATH, self.twilio.inbound(address, body, **extra))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/xml")
        assert response.text.endswith("<Response/>")
        await self.channel.idle()
        return [m for m in self.twilio.calls[before:] if m.ok and m.to == address]

    async def status(self, sid: str, status: str, **kw) -> httpx.Response:
        return await self.post(STATUS_PATH, self.twilio.status(sid, status, **kw))

    async def onboard(self, address: str = AYSE) -> None:
        await self.say("Merhaba", address)
        await self.say("1", address)          # Türkçe
        await self.say("1", address)          # accept every purpose
        sent = await self.say("1", address)   # the first mahalle of the list
        assert any(t_in("tr", "menu.title") in m.body for m in sent)

    def db(self) -> Session:
        return Session(self.app.db)

    def resident(self, address: str = AYSE) -> Resident | None:
        with self.db() as db:
            identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == "whatsapp",
                                                             ChannelIdentity.address == address)).first()
            return db.get(Resident, identity.resident_id) if identity else None

    def set_last_inbound(self, address: str, ago: timedelta) -> None:
        with transaction(self.app.db) as db:
            db.exec(update(ChannelIdentity).where(ChannelIdentity.address == address)
                    .values(last_inbound_at=utcnow() - ago))


@pytest.fixture
async def wa(make_app, twilio):
    """start(**settings) → WA: the app built, channels added and started, HTTP served, as `katilim run`."""
    twilio.reset()
    started: list[WA] = []

    async def start(**overrides) -> WA:
        port = free_port()
        values = dict(twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                      twilio_whatsapp_from=SENDER, twilio_api_url=twilio.root,
                      public_base_url=f"http://127.0.0.1:{port}", http_port=port)
        values.update(overrides)
        app = make_app(**values)
        add_configured_channels(app)
        for channel in app.channels.values():
            await channel.start()
        harness = WA(app, await serve_http(app), twilio)
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.close()


def numbered(body: str) -> list[str]:
    return re.findall(r"^(\d+) · (.+)$", body, flags=re.M)


def count(db: Session, model) -> int:
    return db.exec(select(func.count()).select_from(model)).one()


# ---------------------------------------------------------------- the resident's conversations
async def test_onboarding_mahalle_export_and_deletion(wa, db_url):
    h = await wa(database_url=db_url)
    sent = await h.say("Merhaba", profile_name="Ayşe Yılmaz")
    assert numbered(sent[-1].body)[0] == ("1", t_in("tr", "language.name")) or \
        numbered(sent[-1].body)[0][1].endswith(t_in("tr", "language.name"))
    assert h.resident().display_name == "Ayşe Yılmaz"
    sent = await h.say("English")                        # typed words resolve to the choice too
    assert t_in("en", "notice.accept_all") in [label for _, label in numbered(sent[-1].body)]
    sent = await h.say("1")                              # accept all
    assert t_in("en", "mahalle.prompt") in sent[-1].body
    page = numbered(sent[-1].body)
    assert len(page) > 8                                 # a page of mahalles, next page, skip
    next_page = next(n for n, label in page if label.startswith(t_in("en", "engine.page_next").split("{")[0][:4]))
    sent = await h.say(next_page)
    second = numbered(sent[-1].body)
    assert second[0][1] != page[0][1]
    sent = await h.say(second[0][1])                     # the option's name, typed
    hood = h.app.catalog.neighbourhoods[8]
    assert h.resident().mahalle == hood.key
    assert any(t_in("en", "menu.title") in m.body for m in sent)
    with h.db() as db:
        assert {c.purpose for c in db.exec(select(ConsentRecord)) if c.granted} == \
            {"reports", "volunteering", "reminders", "announcements"}

    # the data export: a document WhatsApp fetches from a signed, expiring link
    sent = await h.say("/verilerim")
    with_media = [m for m in sent if m.media_urls]
    assert len(with_media) == 1
    export = with_media[0]
    url = export.media_urls[0]
    assert url.startswith(h.base + FILES_PATH + "/") and url.endswith("/katilim-verilerim.json")
    fetched = export.fetched[0]
    assert fetched["status"] == 200 and fetched["content_type"].startswith("text/plain")
    assert "katilim-verilerim.json" in fetched["disposition"]
    assert_stored_file_headers(fetched["headers"])
    data = json.loads(fetched["content"])
    assert data["resident"]["mahalle"] == hood.key
    assert data["channels"][0]["address"] == AYSE
    tampered = url.replace(FILES_PATH + "/", FILES_PATH + "/x", 1)
    assert (await h.http.get(tampered.removeprefix(h.base))).status_code == 404

    # Twilio's status callbacks are recorded on the outbox row of that message
    assert (await h.status(export.sid, "delivered")).status_code == 204
    assert (await h.status(export.sid, "read")).status_code == 204
    assert (await h.status(export.sid, "delivered")).status_code == 204   # late: "read" stays
    forged = h.twilio.status(export.sid, "failed", error_code="30008")
    assert (await h.post(STATUS_PATH, forged, token="wrong-token")).status_code == 403
    with h.db() as db:
        row = db.exec(select(OutboxMessage).where(OutboxMessage.provider_id == export.sid)).one()
        assert (row.status, row.delivery_status, row.delivery_error) == ("sent", "read", "")
    other = sent[0] if sent[0] is not export else sent[-1]
    assert (await h.status(other.sid, "undelivered", error_code="63024",
                           error_message="Invalid message recipient")).status_code == 204
    with h.db() as db:
        row = db.exec(select(OutboxMessage).where(OutboxMessage.provider_id == other.sid)).one()
        assert (row.delivery_status, row.delivery_error) == ("undelivered", "63024: Invalid message recipient")

    # deletion
    sent = await h.say("/verilerimisil")
    assert numbered(sent[-1].body)[0][1] == t_in("en", "data.delete_yes")
    sent = await h.say("1")
    assert t_in("en", "data.deleted") in sent[0].body
    assert h.resident() is None
    with h.db() as db:
        assert count(db, ChannelIdentity) == 0


async def test_report_with_photo_location_and_a_proactive_question(wa):
    from bot.dispatcher import Dispatcher
    from storage import reports as rp

    h = await wa()
    await h.onboard()
    sent = await h.say("/bildir")
    categories = numbered(sent[-1].body)
    assert categories and categories[0][1] == h.app.catalog.categories[0].name.get("tr")
    sent = await h.say("1")
    # where first: no location button on WhatsApp, so the question says how to send one
    assert sent[-1].body == "\n\n".join([t_in("tr", "report.location_prompt"), t_in("tr", "report.location_hint"),
                                          "1 · " + t_in("tr", "report.location_mine", mahalle="29 Ekim") + "\n2 · "
                                          + t_in("tr", "report.location_list")])
    sent = await h.say("", Latitude="41.01", Longitude="28.97", MessageType="location")   # Istanbul
    assert sent[-1].body == "\n\n".join([t_in("tr", "report.pin_outside", municipality="Buca Belediyesi"),
                                          t_in("tr", "report.location_hint"),
                                          "1 · " + t_in("tr", "report.pin_keep") + "\n2 · "
                                          + t_in("tr", "report.location_list")])
    assert not any(t_in("tr", "report.location_saved") in m.body for m in sent)
    sent = await h.say("", Latitude="38.3886", Longitude="27.1753", MessageType="location")
    assert sent[-1].body == "\n\n".join([t_in("tr", "report.pin_mahalle", mahalle="Yaylacık"),
                                          "1 · " + t_in("tr", "report.pin_yes", mahalle="Yaylacık") + "\n2 · "
                                          + t_in("tr", "report.pin_other")])
    await h.say("1")                                     # "✅ Evet, Yaylacık": one answer
    photo_url = h.twilio.add_media(JPEG, "image/jpeg")
    sent = await h.say("Kaldırımda büyük bir çukur var", NumMedia="1", MediaUrl0=photo_url,
                       MediaContentType0="image/jpeg", MessageType="image")
    name, cleaned = stored_as(JPEG)
    stored = h.app.settings.media_dir / name
    assert name == f"{hashlib.sha256(cleaned).hexdigest()}.jpg"    # the hash of the cleaned bytes
    assert stored.read_bytes() == cleaned
    assert (h.twilio.media_requests[-1][1]) == 200
    assert numbered(sent[-1].body) == [("1", t_in("tr", "report.photos_done"))]   # "✅ Devam", not "without photo"
    sent = await h.say("1")
    summary = sent[-1].body
    assert numbered(summary)[0][1] == t_in("tr", "report.confirm")
    sent = await h.say("1")
    code = re.search(r"[A-Z]{2,5}-\d{4}-\d{6}", sent[0].body).group(0)
    ayse_id = h.resident().id
    with h.db() as db:
        report = rp.get_by_code(db, code)
        assert report.resident_id == ayse_id and report.latitude == pytest.approx(38.3886)
        assert report.mahalle == "yaylacik"
        assert [m.path for m in rp.media_of(db, report.id)] == [str(stored)]

    # staff resolve it: the notification (proactive, through the dispatcher) asks "was it solved?"
    with transaction(h.app.db) as db:
        reports_domain.change_status(db, Actor(who="staff:test", role="admin"), code, "resolved", catalog=h.app.catalog)
    before = len(h.twilio.messages)
    dispatcher = Dispatcher(h.app, {"whatsapp": h.app.senders["whatsapp"]}, "test-dispatcher", h.app.settings)
    assert await dispatcher.start()
    await h.twilio.async_wait_for(lambda s: len(s.messages) > before)
    await dispatcher.stop()
    question = h.twilio.messages[-1]
    labels = numbered(question.body)
    assert [label for _, label in labels] == [t_in("tr", "report.notify.resolved_yes"),
                                              t_in("tr", "report.notify.resolved_no")]
    sent = await h.say("1")                              # answers the question, not menu item 1
    assert t_in("tr", "report.rate_prompt", code=code) in sent[0].body
    sent = await h.say("5")
    assert t_in("tr", "report.rated", rating=5, code=code) in sent[0].body
    with h.db() as db:
        assert rp.get_by_code(db, code).rating == 5


async def test_a_number_accepted_before_a_restart_still_answers_the_proactive_question(wa):
    """A "1" that the webhook stored but this process did not handle (it stopped first) is handed
    over by the scheduler's "inbox" job (App.handle with its inbox row): it answers the "was it
    solved?" question sent last, as it would have when handled at once."""
    from bot.dispatcher import Dispatcher
    from storage import reports as rp

    h = await wa()
    await h.onboard()
    with transaction(h.app.db) as db:
        report = rp.create_report(db, prefix=h.app.catalog.municipality.tracking_prefix, resident_id=h.resident().id,
                                  category=h.app.catalog.categories[0].key, description="Kaldırımda çukur var",
                                  channel="whatsapp")
        reports_domain.change_status(db, Actor(who="staff:test", role="admin"), report.code, "resolved", catalog=h.app.catalog)
    before = len(h.twilio.messages)
    dispatcher = Dispatcher(h.app, {"whatsapp": h.app.senders["whatsapp"]}, "test-dispatcher", h.app.settings)
    assert await dispatcher.start()
    await h.twilio.async_wait_for(lambda s: len(s.messages) > before)
    await dispatcher.stop()
    assert numbered(h.twilio.messages[-1].body)[0][1] == t_in("tr", "report.notify.resolved_yes")

    typed = to_inbound(h.twilio.inbound(AYSE, "1"))
    inbox_id = await h.app.accept(typed)          # stored by the webhook; then the process stopped
    before = len(h.twilio.messages)
    await h.app.handle(typed, inbox_id=inbox_id)  # what the "inbox" job does after a restart
    assert t_in("tr", "report.rate_prompt", code=report.code) in h.twilio.messages[before].body


async def test_long_lists_page_and_long_bodies_split(wa):
    h = await wa()
    await h.say("Merhaba")
    await h.say("1")
    sent = await h.say("1")
    first = numbered(sent[-1].body)
    sent = await h.say(str(len(first) - 1))              # next page
    assert numbered(sent[-1].body)[0] != first[0]

    text = " ".join(f"kelime{i}" for i in range(600))   # 5790 characters: four messages
    before = len(h.twilio.messages)
    await h.channel.sender.send(AYSE, Outbound(text=text))
    parts = [m.body for m in h.twilio.messages[before:]]
    assert len(parts) == 4 and all(1580 <= len(p) <= 1600 for p in parts[:-1])
    assert " ".join(parts) == text                       # cut between words, nothing lost
    assert split_body("a" * 3300) == ["a" * 1600, "a" * 1600, "a" * 100]


async def test_photos_documents_and_pins_go_out_as_media(wa, tmp_path):
    h = await wa()
    photo = tmp_path / "foto.jpg"
    photo.write_bytes(JPEG)
    pdf = tmp_path / "rapor.pdf"
    pdf.write_bytes(b"%PDF-1.4 katilim")
    sender = h.channel.sender
    before = len(h.twilio.messages)
    await sender.send(AYSE, Outbound(text="Çukur kapatıldı", photo_path=str(photo)))
    await sender.send(AYSE, Outbound(text="", document=Attachment("rapor.pdf", "application/pdf", "", str(pdf))))
    await sender.send(AYSE, Outbound(text="Toplantı yeri", latitude=38.39, longitude=27.17,
                                     venue_title="Buca Belediyesi"))
    photo_msg, pdf_msg, pin = h.twilio.messages[before:]
    assert photo_msg.body == "Çukur kapatıldı"
    assert photo_msg.fetched[0]["content"] == JPEG and photo_msg.fetched[0]["content_type"] == "image/jpeg"
    assert pdf_msg.media_urls[0].endswith("/rapor.pdf") and not pdf_msg.body
    assert pdf_msg.fetched[0]["content_type"] == "application/pdf"
    for fetched in (photo_msg.fetched[0], pdf_msg.fetched[0]):
        assert_stored_file_headers(fetched["headers"])
    assert pin.params["PersistentAction"] == ["geo:38.390000,27.170000|Buca Belediyesi"]
    assert pin.body == "Toplantı yeri\n\n📍 Buca Belediyesi"
    assert all(m.params["StatusCallback"] == h.base + STATUS_PATH for m in (photo_msg, pdf_msg, pin))


# ---------------------------------------------------------------- refused, replayed, malformed
async def test_forged_unsigned_oversized_and_malformed_requests_write_nothing(wa):
    h = await wa()
    params = h.twilio.inbound(AYSE, "Merhaba")
    assert (await h.post(WEBHOOK_PATH, params, sign=False)).status_code == 403
    assert (await h.post(WEBHOOK_PATH, params, token="not-the-token")).status_code == 403
    assert (await h.post(WEBHOOK_PATH, params, url="https://elsewhere.example" + WEBHOOK_PATH)).status_code == 403
    signed = signature(h.twilio.auth_token, h.base + WEBHOOK_PATH, params)
    tampered = {**params, "Body": "/verilerimisil"}
    response = await h.http.post(WEBHOOK_PATH, data=tampered, headers={"X-Twilio-Signature": signed})
    assert response.status_code == 403
    other_account = {**params, "AccountSid": "AC" + "0" * 32}
    assert (await h.post(WEBHOOK_PATH, other_account)).status_code == 403
    huge = {**params, "Body": "x" * 200_000}
    assert (await h.post(WEBHOOK_PATH, huge)).status_code == 413
    no_sid = {k: v for k, v in params.items() if k not in ("MessageSid", "SmsMessageSid", "SmsSid")}
    assert (await h.post(WEBHOOK_PATH, no_sid)).status_code == 400
    assert (await h.post(WEBHOOK_PATH, {**params, "From": "whatsapp:nobody", "WaId": ""})).status_code == 400
    garbage = b"\xff\xfe=%%%"
    response = await h.http.post(WEBHOOK_PATH, content=garbage,
                                 headers={"X-Twilio-Signature": "abc",
                                          "content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 403
    assert (await h.post(STATUS_PATH, h.twilio.status("SM" + "0" * 32, "read"), sign=False)).status_code == 403
    await h.channel.idle()
    with h.db() as db:
        assert count(db, ProcessedInbound) == count(db, Resident) == count(db, OutboxMessage) == 0
    assert h.twilio.calls == []


async def test_a_replayed_message_is_handled_once(wa):
    h = await wa()
    params = h.twilio.inbound(AYSE, "Merhaba")
    first = await h.post(WEBHOOK_PATH, params)
    second = await h.post(WEBHOOK_PATH, params)          # Twilio retries with the same MessageSid
    assert first.status_code == second.status_code == 200
    await h.channel.idle()
    assert len(h.twilio.messages) == 1
    with h.db() as db:
        assert count(db, ProcessedInbound) == 1 and count(db, Resident) == 1


async def test_stop_finishes_accepted_messages(wa):
    h = await wa()
    for i in range(3):
        response = await h.post(WEBHOOK_PATH, h.twilio.inbound(f"whatsapp:+90555000000{i}", "Merhaba"))
        assert response.status_code == 200
    await h.channel.stop()                               # waits for the three tasks
    assert not h.channel._tasks and len(h.twilio.messages) == 3
    response = await h.post(WEBHOOK_PATH, h.twilio.inbound(AYSE, "Merhaba"))
    assert response.status_code == 200 and h.twilio.bodies(AYSE)   # handled before the answer


async def test_media_over_the_limit_or_not_from_twilio_is_not_downloaded(wa):
    h = await wa(media_max_bytes=2048)
    await h.onboard()
    await h.say("/bildir")
    await h.say("1")
    await h.say("Kozağaç")                               # where first, then the description step
    await h.say("Okulun önünde")
    big = h.twilio.add_media(b"\xff\xd8" + b"0" * 5000, "image/jpeg")
    sent = await h.say("", NumMedia="1", MediaUrl0=big, MediaContentType0="image/jpeg")
    assert any(t_in("tr", "report.media_failed") in m.body for m in sent)
    sent = await h.say("", NumMedia="1", MediaUrl0="http://127.0.0.2:9/evil.jpg", MediaContentType0="image/jpeg")
    assert any(t_in("tr", "report.media_failed") in m.body for m in sent)
    assert not [p for p in h.app.settings.media_dir.iterdir() if p.is_file()]
    voice = h.twilio.add_media(b"OggS" + b"v" * 100, "audio/ogg")
    sent = await h.say("", NumMedia="1", MediaUrl0=voice, MediaContentType0="audio/ogg", MessageType="audio")
    assert any(t_in("tr", "report.voice_saved") in m.body for m in sent)
    assert (h.app.settings.media_dir / f"{hashlib.sha256(b'OggS' + b'v' * 100).hexdigest()}.ogg").exists()


def test_inbound_mapping():
    base = FakeTwilioServer(account_sid="AC" + "a" * 32).inbound
    msg = to_inbound(base(AYSE, "/Bagla şimdi"))
    assert (msg.kind, msg.command, msg.text, msg.address) == (Kind.COMMAND, "bagla", "/bagla şimdi", AYSE)
    msg = to_inbound(base(AYSE, "Evet", ButtonPayload="rs:yes:BCA-2026-000001", ButtonText="Evet"))
    assert (msg.kind, msg.choice) == (Kind.CHOICE, "rs:yes:BCA-2026-000001")
    msg = to_inbound(base(AYSE, "", Latitude="38.39", Longitude="27.17", Label="Buca Belediyesi"))
    assert (msg.kind, msg.latitude, msg.longitude, msg.text) == (Kind.LOCATION, 38.39, 27.17, "Buca Belediyesi")
    for content_type, kind in (("image/jpeg", Kind.PHOTO), ("audio/ogg", Kind.VOICE), ("application/pdf", Kind.DOCUMENT)):
        msg = to_inbound(base(AYSE, "altyazı", NumMedia="1", MediaUrl0="https://api.twilio.com/x",
                              MediaContentType0=content_type))
        assert (msg.kind, msg.text, msg.media[0].content_type) == (kind, "altyazı", content_type)
    assert to_inbound(base(AYSE, "", MessageType="sticker", NumMedia="1", MediaUrl0="https://api.twilio.com/s",
                           MediaContentType0="image/webp")).kind == Kind.STICKER
    assert to_inbound(base(AYSE, "👍", MessageType="reaction")) is None
    msg = to_inbound({**base(AYSE, "selam"), "From": ""})
    assert msg.address == AYSE                           # from WaId
    with pytest.raises(ValueError):
        to_inbound({**base(AYSE, "x"), "MessageSid": "", "SmsMessageSid": ""})
    assert normalize_address("whatsapp:+90 555 111 22 33") == AYSE
    assert normalize_phone("0555 111 22 33") == normalize_phone("905551112233") == "+905551112233"
    out = Outbound(text="Hangisi?", choices=[Choice("a", "Yol ve kaldırım"), Choice("b", "Temizlik")])
    assert render(out) == "Hangisi?\n\n1 · Yol ve kaldırım\n2 · Temizlik"


# ---------------------------------------------------------------- the 24-hour window, templates, errors
async def test_the_24_hour_window_and_templates(wa):
    from bot.dispatcher import Dispatcher

    h = await wa(twilio_template_notification=TEMPLATE)
    await h.say("Merhaba")
    sender: WhatsAppSender = h.channel.sender
    note = Outbound(text="Başvurunuz çözüldü.\nTeşekkürler!")

    # inside the window: free text for every kind
    before = len(h.twilio.messages)
    await sender.send(AYSE, note, kind="broadcast")
    assert h.twilio.messages[before].body == note.text

    h.set_last_inbound(AYSE, timedelta(hours=25))
    before = len(h.twilio.messages)
    sid = await sender.send(AYSE, note, kind="notification")
    sent = h.twilio.messages[before]
    assert sid == sent.sid and sent.content_sid == TEMPLATE and not sent.body
    assert json.loads(sent.content_variables) == {"1": "Başvurunuz çözüldü. Teşekkürler!"}
    with pytest.raises(SendError) as err:
        await sender.send(AYSE, note, kind="reminder")   # no reminder template
    assert err.value.failure is SendFailure.WINDOW and "TWILIO_TEMPLATE_REMINDER" in err.value.reason
    await sender.send(AYSE, Outbound(text="yanıt"), kind="reply")   # replies are always free text
    assert h.twilio.messages[-1].body == "yanıt"

    # our record says inside, Twilio says outside (63016): the template goes instead
    h.set_last_inbound(AYSE, timedelta(hours=1))
    h.twilio.fail_next(63016)
    await sender.send(AYSE, note, kind="notification")
    assert h.twilio.messages[-1].content_sid == TEMPLATE

    # through the outbox and the dispatcher: a template, or unsendable with the reason
    h.set_last_inbound(AYSE, timedelta(hours=30))
    resident_id = h.resident().id
    with transaction(h.app.db) as db:
        notify_resident(db, resident_id, lambda t, lang: Outbound(text="Bildirim"), kind="notification")
        notify_resident(db, resident_id, lambda t, lang: Outbound(text="Duyuru"), kind="broadcast")
    dispatcher = Dispatcher(h.app, {"whatsapp": h.app.senders["whatsapp"]}, "test-dispatcher", h.app.settings)
    assert await dispatcher.start()

    def settled(_):
        with h.db() as db:
            rows = db.exec(select(OutboxMessage).where(OutboxMessage.kind != "reply")).all()
            return rows if rows and all(r.status not in ("pending", "sending") for r in rows) else None

    rows = {r.kind: r for r in await h.twilio.async_wait_for(settled)}
    await dispatcher.stop()
    assert rows["notification"].status == "sent"
    assert rows["notification"].provider_id == h.twilio.messages[-1].sid
    assert h.twilio.messages[-1].content_sid == TEMPLATE
    assert rows["broadcast"].status == "unsendable"
    assert "window" in rows["broadcast"].error and "TWILIO_TEMPLATE_BROADCAST" in rows["broadcast"].error


async def test_twilio_errors_in_the_dispatchers_terms(wa, make_settings):
    h = await wa()
    sender = h.channel.sender
    expected = {63016: SendFailure.WINDOW, 21610: SendFailure.UNREACHABLE, 63018: SendFailure.RATE_LIMITED,
                20429: SendFailure.RATE_LIMITED, 21211: SendFailure.PERMANENT, 500: SendFailure.RETRYABLE,
                503: SendFailure.RETRYABLE}
    for code, failure in expected.items():
        h.twilio.fail_next(code)
        with pytest.raises(SendError) as err:
            await sender.send(AYSE, Outbound(text="x"))
        assert err.value.failure is failure, code
        if failure is SendFailure.RATE_LIMITED:
            assert err.value.retry_after > 0
    closed = make_settings(twilio_account_sid=h.twilio.account_sid, twilio_auth_token=h.twilio.auth_token,
                           twilio_whatsapp_from=SENDER, twilio_api_url=f"http://127.0.0.1:{free_port()}",
                           public_base_url=h.base)
    with pytest.raises(SendError) as err:
        await WhatsAppSender(closed, h.app.db).send(AYSE, Outbound(text="x"))
    assert err.value.failure is SendFailure.RETRYABLE
    wrong_token = make_settings(twilio_account_sid=h.twilio.account_sid, twilio_auth_token="wrong",
                                twilio_whatsapp_from=SENDER, twilio_api_url=h.twilio.root, public_base_url=h.base)
    with pytest.raises(SendError) as err:
        await WhatsAppSender(wrong_token, h.app.db).send(AYSE, Outbound(text="x"))
    assert err.value.failure is SendFailure.PERMANENT


def assert_stored_file_headers(headers) -> None:
    """What handlers.files.stored_file puts on every file served from storage."""
    headers = {k.lower(): v for k, v in headers.items()}
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["content-security-policy"] == "default-src 'none'; sandbox"
    assert headers["cache-control"] == "private, no-store"


async def test_signed_files_are_served_as_what_their_bytes_are(wa):
    """The type a file is served with comes from its bytes, never from its name or a claimed type:
    an SVG with a script, or HTML named .jpg, goes as text/plain under a CSP that allows nothing."""
    h = await wa()
    files = h.channel.sender.files
    cases = [(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "foto.svg",
              "text/plain; charset=utf-8"),
             (b"<html><script>alert(document.cookie)</script></html>", "foto.jpg", "text/plain; charset=utf-8"),
             (JPEG, "belge.html", "image/jpeg"),
             (b"\x00\x01\x02 binary", "x.pdf", "application/octet-stream")]
    for content, name, served in cases:
        url = files.publish(content, name)
        for method in ("GET", "HEAD"):
            got = await h.http.request(method, url.removeprefix(h.base))
            assert got.status_code == 200, (name, got.status_code)
            assert got.headers["content-type"] == served, name
            assert_stored_file_headers(got.headers)
        assert got.content == b""  # HEAD: headers only
        assert (await h.http.get(url.removeprefix(h.base))).content == content


async def test_signed_file_links_expire(tmp_path, make_settings):
    settings = make_settings(twilio_account_sid="AC" + "b" * 32, twilio_auth_token="tok",
                             twilio_whatsapp_from=SENDER, public_base_url="https://katilim.example")
    files = OutboundFiles(settings)
    url = files.publish(b"BEGIN:VCALENDAR", "etkinlik.ics", now=1000.0)
    token = url.split(FILES_PATH + "/", 1)[1].split("/")[0]
    assert files.open(token, now=1000.0).read_bytes() == b"BEGIN:VCALENDAR"
    assert files.open(token, now=1000.0 + 3601) is None
    payload, sig = token.split(".")
    assert files.open(payload + "." + sig[::-1], now=1000.0) is None
    assert OutboundFiles(make_settings(twilio_account_sid="AC" + "b" * 32, twilio_auth_token="other",
                                       twilio_whatsapp_from=SENDER)).open(token, now=1000.0) is None


def test_settings_are_validated(make_settings):
    from bot.settings import SettingsError

    with pytest.raises(SettingsError, match="TWILIO_WHATSAPP_FROM"):
        make_settings(twilio_account_sid="AC" + "a" * 32)
    with pytest.raises(SettingsError, match="TWILIO_ACCOUNT_SID"):
        make_settings(twilio_account_sid="nope", twilio_auth_token="t", twilio_whatsapp_from=SENDER)
    with pytest.raises(SettingsError, match="TWILIO_TEMPLATE_BROADCAST"):
        make_settings(twilio_template_broadcast="template")
    settings = make_settings(twilio_account_sid="AC" + "a" * 32, twilio_auth_token="t",
                             twilio_whatsapp_from="+90 555 000 00 00")
    assert settings.twilio_whatsapp_from == SENDER and settings.whatsapp_enabled


def test_whatsapp_needs_a_public_url(make_app):
    from handlers.kit import ChannelSetupError

    app = make_app(twilio_account_sid="AC" + "a" * 32, twilio_auth_token="t", twilio_whatsapp_from=SENDER)
    with pytest.raises(ChannelSetupError, match="PUBLIC_BASE_URL"):
        add_configured_channels(app)


# ---------------------------------------------------------------- one resident, two channels
async def _telegram_say(tg, channel, chat_id: int, push) -> list:
    before = len(tg.sent_messages(chat_id))
    update = push()
    await tg.async_wait_for(lambda s: update["update_id"] in channel.completed, timeout=10)
    return tg.sent_messages(chat_id)[before:]


async def test_linking_telegram_and_whatsapp_makes_one_resident(wa, tg):
    h = await wa(telegram_bot_token=tg.token, telegram_api_url=tg.root)
    telegram = h.app.channels["telegram"]
    await h.onboard(AYSE)
    whatsapp_resident = h.resident(AYSE)

    # Telegram: a new chat asks to link; the bot asks for the contact with a share button
    calls = await _telegram_say(tg, telegram, 501, lambda: tg.push_text(501, "/bagla"))
    markup = calls[-1].params["reply_markup"]
    assert markup["keyboard"][0][0] == {"text": t_in("tr", "link.share_button"), "request_contact": True}
    # someone else's contact card is not accepted
    calls = await _telegram_say(tg, telegram, 501, lambda: tg.push_update({"message": tg._user_message(
        501, contact={"phone_number": "905551112233", "first_name": "Başkası", "user_id": 999})}))
    with h.db() as db:
        assert count(db, Resident) == 2
    # their own contact, with the WhatsApp number: one resident
    calls = await _telegram_say(tg, telegram, 501, lambda: tg.push_contact(501, "+90 555 111 22 33"))
    assert t_in("tr", "link.done") in [c.text for c in calls]
    assert any(c.params.get("reply_markup", {}).get("remove_keyboard") for c in calls)
    with h.db() as db:
        residents = db.exec(select(Resident)).all()
        assert len(residents) == 1
        person = residents[0]
        assert person.phone == "+905551112233" and person.onboarded_at is not None
        assert person.mahalle == whatsapp_resident.mahalle
        identities = {(i.channel, i.address) for i in db.exec(select(ChannelIdentity))}
        assert identities == {("whatsapp", AYSE), ("telegram", "501")}
        assert {c.resident_id for c in db.exec(select(ConsentRecord))} == {person.id}
        assert count(db, ConversationSession) == 1
    # a number nobody wrote from on WhatsApp
    await _telegram_say(tg, telegram, 504, lambda: tg.push_text(504, "/bagla"))
    calls = await _telegram_say(tg, telegram, 504, lambda: tg.push_contact(504, "905559998877"))
    assert t_in("tr", "link.no_match", phone="+905559998877") in [c.text for c in calls]
    # both channels now reach the same person
    sent = await h.say("/menu", AYSE)
    assert t_in("tr", "menu.title") in sent[-1].body
    assert h.resident(AYSE).id == person.id

    # the code path: WhatsApp /bagla shows a one-time code; typed on Telegram it links
    await h.onboard(MEHMET)
    sent = await h.say("/bagla", MEHMET)
    code = re.search(r"\b(\d{5} \d{5})\b", sent[0].body).group(1)
    await _telegram_say(tg, telegram, 502, lambda: tg.push_text(502, "/bagla"))
    wrong = "00000 00000" if code != "00000 00000" else "11111 11111"
    calls = await _telegram_say(tg, telegram, 502, lambda: tg.push_text(502, wrong))
    assert t_in("tr", "link.code_invalid") in [c.text for c in calls]
    calls = await _telegram_say(tg, telegram, 502, lambda: tg.push_text(502, code))
    assert t_in("tr", "link.done") in [c.text for c in calls]
    mehmet = h.resident(MEHMET)
    with h.db() as db:
        assert count(db, Resident) == 3 and count(db, LinkCode) == 0   # Ayşe, Mehmet, chat 504
        assert {i.channel for i in db.exec(select(ChannelIdentity).where(
            ChannelIdentity.resident_id == mehmet.id))} == {"whatsapp", "telegram"}
        assert mehmet.phone == "+905554445566"
    # used once
    await _telegram_say(tg, telegram, 503, lambda: tg.push_text(503, "/bagla"))
    calls = await _telegram_say(tg, telegram, 503, lambda: tg.push_text(503, code))
    assert t_in("tr", "link.code_invalid") in [c.text for c in calls]


async def test_linking_moves_every_features_rows(wa, db_url):
    """A WhatsApp resident's report follows them when they link from another channel."""
    from storage import reports as rp

    h = await wa(database_url=db_url)
    await h.onboard(AYSE)
    with transaction(h.app.db) as db:
        report = rp.create_report(db, prefix="BCA", resident_id=h.resident(AYSE).id, category="yol",
                                  description="çukur", latitude=None, longitude=None, mahalle=None, address="",
                                  media=[], channel="whatsapp")
        code = report.code
    sent = await h.say("/bagla", AYSE)
    link_code = re.search(r"\b(\d{5} \d{5})\b", sent[0].body).group(1)
    console = h.app.engine
    from conversations.messages import Inbound

    reply = console.handle(Inbound(channel="console", address="ayse", kind=Kind.COMMAND, command="bagla",
                                   text="/bagla"))
    assert t_in("tr", "link.ask_code") in reply.replies[0][1].text
    reply = console.handle(Inbound(channel="console", address="ayse", kind=Kind.TEXT, text=link_code))
    assert t_in("tr", "link.done") in [out.text for _, out in reply.replies]
    with h.db() as db:
        assert count(db, Resident) == 1
        assert rp.get_by_code(db, code).resident_id == reply.resident_id


# ---------------------------------------------------------------- guessing link codes
CODE_IN_TEXT = re.compile(r"\b(\d{5} \d{5})\b")


def console_say(app, who: str, text: str) -> list[str]:
    """A terminal resident's message handled by `app`'s engine; the texts of the replies."""
    return [out.text for out in Chat(app, who).say(text)]


def wrong_codes(*live: str):
    """Ten-digit codes that are none of the live ones, typed the ways residents type them."""
    live_digits = {code.replace(" ", "") for code in live}
    for n in range(1, 10 ** 6):
        code = f"{n * 7919:010d}"
        if code not in live_digits:
            yield code if n % 2 else f"{code[:5]} {code[5:]}"


def link_audit(db: Session) -> list:
    from storage.models import AuditLog

    return list(db.exec(select(AuditLog).where(AuditLog.action.in_(
        ("link.code_wrong", "link.paused", "resident.merged"))).order_by(AuditLog.id)))


async def test_a_resident_guessing_link_codes_is_stopped(wa, tg, figure):
    from conversations.linking import MAX_WRONG_CODES

    h = await wa(telegram_bot_token=tg.token, telegram_api_url=tg.root)
    telegram = h.app.channels["telegram"]
    await h.onboard(MEHMET)
    code = CODE_IN_TEXT.search((await h.say("/bagla", MEHMET))[0].body).group(1)
    await _telegram_say(tg, telegram, 601, lambda: tg.push_text(601, "/bagla"))
    guesses = wrong_codes(code)
    for _ in range(MAX_WRONG_CODES):
        calls = await _telegram_say(tg, telegram, 601, lambda: tg.push_text(601, next(guesses)))
        assert t_in("tr", "link.code_invalid") in [c.text for c in calls]
    calls = await _telegram_say(tg, telegram, 601, lambda: tg.push_text(601, next(guesses)))
    assert t_in("tr", "link.too_many") in [c.text for c in calls]
    # stopped for the hour: even the right code is not tried for this resident (it stays live)
    await _telegram_say(tg, telegram, 601, lambda: tg.push_text(601, "/bagla"))
    calls = await _telegram_say(tg, telegram, 601, lambda: tg.push_text(601, code))
    assert t_in("tr", "link.too_many") in [c.text for c in calls]
    with h.db() as db:
        assert count(db, LinkCode) == 1
        guesser = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == "601")).one().resident_id
    # Mehmet himself, from another Telegram chat, links with it
    await _telegram_say(tg, telegram, 602, lambda: tg.push_text(602, "/bagla"))
    calls = await _telegram_say(tg, telegram, 602, lambda: tg.push_text(602, code.replace(" ", "")))
    assert t_in("tr", "link.done") in [c.text for c in calls]
    with h.db() as db:
        rows = link_audit(db)
        wrong = [r for r in rows if r.action == "link.code_wrong"]
        assert len(wrong) == MAX_WRONG_CODES
        assert {(r.actor, r.target) for r in wrong} == {(f"resident:{guesser}", f"resident:{guesser}")}
        merged = [r for r in rows if r.action == "resident.merged"]
        assert len(merged) == 1 and merged[0].actor.startswith("resident:")
        for row in rows:  # pseudonymous: no chat id, no phone number
            text = json.dumps([row.actor, row.target, row.details])
            assert "601" not in text and "602" not in text and "555444" not in text, text
    figure(f"link codes, one resident: {MAX_WRONG_CODES} wrong codes an hour, then every attempt refused "
           "(the right code too) while the code stays live for its owner")


async def test_guessing_across_many_residents_pauses_linking_and_voids_live_codes(wa, db_url, figure):
    """Wrong codes from many residents, through two workers sharing the database, use up the
    global budget (LINK_CODE_FAILURES, 50 an hour): until then a right code links; the guess that
    uses it up pauses linking by code for everyone (LINK_CODE_PAUSE) and voids every live code."""
    from bot.app import build_app
    from conversations.linking import MAX_WRONG_CODES
    from storage.linking import LinkGuard

    h = await wa(database_url=db_url)
    other = build_app(h.app.settings, role="worker")  # a second worker on the same database
    workers = [h.app, other]
    budget = h.app.settings.link_code_failures
    try:
        await h.onboard(MEHMET)
        code = CODE_IN_TEXT.search((await h.say("/bagla", MEHMET))[0].body).group(1)
        guesses = wrong_codes(code)
        made = 0
        residents = 0
        while made < budget - 1:  # at most MAX_WRONG_CODES each, alternately on each worker
            who = f"guesser{residents}"
            residents += 1
            console_say(workers[residents % 2], who, "/bagla")
            for i in range(min(MAX_WRONG_CODES, budget - 1 - made)):
                replies = console_say(workers[(residents + i) % 2], who, next(guesses))
                assert t_in("tr", "link.code_invalid") in replies, replies
                made += 1
        # one wrong code short of the budget, a right code still links
        console_say(other, "mehmet", "/bagla")
        assert t_in("tr", "link.done") in console_say(other, "mehmet", code)
        await h.onboard(AYSE)
        ayse_code = CODE_IN_TEXT.search((await h.say("/bagla", AYSE))[0].body).group(1)

        # the wrong code that uses up the budget, from a resident who has not been stopped
        console_say(h.app, "last-guesser", "/bagla")
        replies = console_say(h.app, "last-guesser", next(guesses))
        assert replies[0] == translator("tr").n("link.paused", 60, minutes=60), replies  # then onboarding goes on
        with h.db() as db:
            assert count(db, LinkCode) == 0  # Ayşe's live code is void
            guard = db.get(LinkGuard, 1)
            assert guard.failures == 0 and guard.paused_until > utcnow() + timedelta(minutes=59)
            paused = [r for r in link_audit(db) if r.action == "link.paused"]
            assert len(paused) == 1 and paused[0].details["codes_voided"] == 1
            assert paused[0].details["failures"] == budget
            assert all(r.actor.startswith("resident:") for r in link_audit(db))
        # paused for everyone: Ayşe's old code, and no new code on WhatsApp
        console_say(other, "ayse", "/bagla")
        assert console_say(other, "ayse", ayse_code)[0] == translator("tr").n("link.paused", 60, minutes=60)
        sent = await h.say("/bagla", AYSE)
        assert translator("tr").n("link.paused", 60, minutes=60) in [m.body for m in sent]
        assert not CODE_IN_TEXT.search(" ".join(m.body for m in sent))

        # an hour later (the pause's end moved into the past) linking by code works again
        with transaction(h.app.db) as db:
            db.exec(update(LinkGuard).values(paused_until=utcnow() - timedelta(seconds=1)))
        ayse_code = CODE_IN_TEXT.search((await h.say("/bagla", AYSE))[0].body).group(1)
        console_say(other, "ayse", "/bagla")
        arabic = ayse_code.translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")).replace(" ", "-")
        assert t_in("tr", "link.done") in console_say(other, "ayse", arabic)  # an Arabic keyboard's digits
    finally:
        other.db.dispose()
    figure(f"link codes, all residents: 10^10 codes; {budget - 1} wrong codes from {residents} residents "
           f"(at most {MAX_WRONG_CODES} each, two workers) left a right code working; wrong code {budget} "
           f"paused linking by code for {h.app.settings.link_code_pause} and voided the 1 live code")
