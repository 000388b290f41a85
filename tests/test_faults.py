"""Fault suite (issue 7), in-process part: the application wired as `katilim run` wires it (the real
PTB Application long-polling the fake Bot API server, the scheduler with the outbox dispatcher, a
real SQLite database) while things go wrong around it.

- The Bot API answers 5xx, drops connections and answers slowly while residents talk: every reply
  arrives exactly once. The same during outbox delivery, plus answers that never come in time (the
  one case that can repeat a message: the platform got it, we never heard back).
- The SQLite database is locked by another connection for 2 s while messages arrive: they are
  processed after it, none lost.
- Webhook abuse: an oversized Telegram webhook body gets 413 and writes nothing (forged secrets and
  Twilio signatures are in test_telegram.py / test_whatsapp.py); a flood from one account is throttled
  with one polite notice in the resident's language while another resident is answered normally
  (Telegram and WhatsApp: the guard sits in App.handle, channel-agnostic).
- Hostile input at every registered state (test_properties.py walks the states at random; here every
  state gets empty, 10,000-character, control-character, right-to-left, emoji and SQL-like text and
  the global commands).

The kill -9 and PostgreSQL-restart tests are in test_faults_process.py.
"""
from __future__ import annotations

import asyncio
import collections
import sqlite3
import time
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from bot.app import add_configured_channels
from bot.dispatcher import Dispatcher
from bot.flood import DROP, NOTICE, PASS, FloodGuard
from bot.http import create_http_app, serve_http
from bot.scheduler import start_scheduler, stop_jobs
from bot.settings import SettingsError
from conversations.i18n import LANGUAGES, t_in, translator
from conversations.messages import Inbound, Kind
from conversations.step import Ctx, step
from handlers.telegram import MAX_WEBHOOK_BYTES, webhook_secret
from storage.db import transaction, utcnow
from storage.inbox import InboundQueue
from storage.models import ChannelIdentity, OutboxMessage, ProcessedInbound, Resident, Staff
from tests.fakes.telegram_api import FakeTelegramServer
from tests.fakes.twilio_api import FakeTwilioServer
from tests.support.texts import notice_summary
from tests.test_dispatcher import close, delivered_per_chat, seed, settled, statuses, wait_until
from tests.test_properties import signature

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")

# A resident onboarding by typing (typed numbers resolve to the offered choices; no button taps,
# so no editMessageText calls take the injected faults): English, consents one by one, a mahalle.
SCRIPT = ["/start", "2", "2", "1", "2", "1", "2", "kozagac", "/yardim"]


# ---------------------------------------------------------------- harness
@pytest.fixture
async def running(make_app, tg):
    """start(**settings) → (app, channel): Telegram started and the scheduler (outbox dispatcher,
    reminders, broadcasts) running, as `katilim run` has them."""
    started = []

    async def start(**overrides):
        app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root, **overrides)
        add_configured_channels(app)
        channel = app.channels["telegram"]
        await channel.start()
        scheduler = start_scheduler(app)
        started.append((app, channel, scheduler))
        return app, channel

    yield start
    for app, channel, scheduler in started:
        scheduler.shutdown(wait=False)
        await stop_jobs(app)
        await channel.stop()


def replies(tg: FakeTelegramServer, chat) -> list[str]:
    """Texts delivered to a chat, in order (not counting edits of tapped messages)."""
    with tg._lock:
        return [c.text for c in tg.delivered if c.method != "editMessageText" and c.text is not None
                and str(c.chat_id) == str(chat)]


async def say(tg: FakeTelegramServer, chat: int, text: str, expect: int, timeout: float = 30,
              lang: str = "en") -> float:
    """Push a message and wait until the chat has `expect` replies in all; returns the seconds it took."""
    started = time.monotonic()
    tg.push_text(chat, text, language_code=lang)
    await tg.async_wait_for(lambda s: len(replies(s, chat)) >= expect, timeout=timeout)
    return time.monotonic() - started


# ---------------------------------------------------------------- the Bot API misbehaves
async def test_replies_survive_5xx_drops_and_slow_answers(running, tg, figure):
    """A resident onboards while the Bot API answers 500/502/503, drops connections and answers
    slowly: every reply arrives exactly once and in order (a failed direct send goes to the
    dispatcher, which retries with backoff; the chat's later rows wait for the retried one), the
    conversation goes on, and nothing stays in the outbox. Per-chat pacing is relaxed here: its
    deferrals would otherwise hide a retried reply overtaken by the next one."""
    app, _ = await running(telegram_per_chat_per_second=100, telegram_per_chat_burst=100)
    reference, faulty = 9100, 9101
    expected: list[int] = []
    for text in SCRIPT:  # the same conversation without faults, for comparison
        before = len(replies(tg, reference))
        await say(tg, reference, text, before + 1)
        await asyncio.sleep(0.3)  # a step's later replies
        expected.append(len(replies(tg, reference)))
    want = replies(tg, reference)

    faults = {1: ("500 ×2", lambda: tg.fail_next(2, 500)),
              2: ("dropped", lambda: tg.drop_next(1)),
              3: ("slow 1.5 s", lambda: tg.delay_next(1, 1.5)),
              4: ("502", lambda: tg.fail_next(1, 502)),
              5: ("dropped, then 503", lambda: (tg.drop_next(1), tg.fail_next(1, 503))),
              7: ("500 ×3 on a two-message reply", lambda: tg.fail_next(3, 500))}
    took: dict[str, float] = {}
    for i, text in enumerate(SCRIPT):
        name, inject = faults.get(i, ("", None))
        if inject is not None:
            inject()
        seconds = await say(tg, faulty, text, expected[i])
        if name:
            took[name] = seconds
    await asyncio.sleep(1.0)  # a late duplicate would show up now
    got = replies(tg, faulty)
    errors = collections.Counter(c.status for c in tg.calls if c.status not in (200, 0))
    figure(f"replies under faults: {len(got)} delivered of {len(want)}, answers {dict(errors)}, "
          f"dropped {sum(1 for c in tg.calls if c.status == 0)}; recovery " +
          ", ".join(f"{k}: {v:.1f}s" for k, v in took.items()))
    assert collections.Counter(got) == collections.Counter(want)  # every reply, exactly once
    assert got == want  # and in order
    await wait_until(lambda: settled(app.db), 10, "outbox settled")
    with Session(app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == str(faulty))).one()
        resident = db.get(Resident, identity.resident_id)
        assert resident.locale == "en" and resident.onboarded_at is not None and resident.mahalle
    assert errors[500] >= 5 and errors[502] >= 1 and errors[503] >= 1


async def test_outbox_delivery_rides_out_drops_and_timeouts(make_app, tg, figure):
    """The dispatcher delivering 40 notifications while the Bot API drops connections, answers 503,
    answers slowly and, twice, answers after the dispatcher stopped waiting (OUTBOX_LEASE 2s: it
    waits 1.6 s). Every resident is reached; only a timed-out send can arrive twice."""
    app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root, outbox_lease="2s",
                   outbox_backoff_cap="2s")
    add_configured_channels(app)
    chats = list(range(820_000, 820_040))
    seed(app.db, chats, kind="notification")
    tg.drop_next(4)
    tg.fail_next(4, 503)
    dispatcher = Dispatcher(app, app.senders, "fault-outbox", app.settings)
    started = time.monotonic()
    assert await dispatcher.start()
    try:
        await wait_until(lambda: len(tg.delivered) >= 12, 20, "the first deliveries")
        tg.delay_next(2, 2.5)   # answered after the dispatcher gave up on them (1.6 s)
        await wait_until(lambda: not tg._delay, 20, "the delayed sends")
        tg.delay_next(2, 0.8)   # slow, but in time
        await wait_until(lambda: settled(app.db), 40, "every notification delivered")
        took = time.monotonic() - started
        await asyncio.sleep(0.5)
    finally:
        await dispatcher.stop()
        await close(app)
    per_chat = delivered_per_chat(tg)
    twice = sum(n - 1 for n in per_chat.values() if n > 1)
    with transaction(app.db) as db:
        attempts = max(r.attempts for r in db.exec(select(OutboxMessage)))
    figure(f"outbox under faults: 40 notifications in {took:.1f}s, {twice} delivered twice (2 timed out), "
          f"max attempts {attempts}")
    assert set(per_chat) == set(chats)
    assert twice <= 2
    assert statuses(app.db) == {"sent": len(chats)}


# ---------------------------------------------------------------- the database
async def test_sqlite_locked_for_two_seconds_loses_nothing(running, tg, tmp_path, figure):
    """Another connection holds BEGIN EXCLUSIVE on the SQLite file for 2 s while three residents
    write: their messages wait (busy timeout) and are processed right after, none lost."""
    app, channel = await running()
    path = app.settings.database_url.removeprefix("sqlite:///")
    await say(tg, 9200, "/start", 1)  # a resident already talking, and everything warmed up
    lock = sqlite3.connect(path, timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    held = time.monotonic()
    pushed = [tg.push_text(9200, "2", language_code="en"), tg.push_text(9201, "/start", language_code="en"),
              tg.push_text(9202, "/start", language_code="ar"), tg.push_text(9203, "/yardim", language_code="tr")]
    await asyncio.sleep(2.0)
    assert all(len(replies(tg, c)) == n for c, n in ((9200, 1), (9201, 0), (9202, 0), (9203, 0)))
    lock.execute("COMMIT")
    released = time.monotonic()
    lock.close()
    await tg.async_wait_for(lambda s: all(replies(s, c) for c in (9201, 9202, 9203)) and len(replies(s, 9200)) >= 2,
                            timeout=30)
    after = time.monotonic() - released
    ids = {str(u["update_id"]) for u in pushed}
    await tg.async_wait_for(lambda s: {u["update_id"] for u in pushed} <= set(channel.completed), timeout=10)
    with Session(app.db) as db:
        recorded = set(db.exec(select(ProcessedInbound.external_id).where(ProcessedInbound.external_id.in_(ids))))
    figure(f"SQLite locked {released - held:.1f}s: 4 messages answered {after:.2f}s after the lock was released")
    assert recorded == ids
    assert replies(tg, 9202)[0].splitlines()[0] == t_in("ar", "onboarding.choose_language")
    assert replies(tg, 9200)[1] == notice_summary(app, "en")
    await wait_until(lambda: settled(app.db), 10, "outbox settled")


# ---------------------------------------------------------------- webhook abuse
async def test_oversized_telegram_webhook_gets_413_and_writes_nothing(running, tg):
    app, channel = await running(telegram_webhook_url="https://katilim.example.org/telegram/webhook")
    signed = {"X-Telegram-Bot-Api-Secret-Token": webhook_secret(app.settings)}
    update = tg.push_text(7301, "/start")
    transport = httpx.ASGITransport(app=create_http_app(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        huge = {**update, "message": {**update["message"], "text": "x" * (MAX_WEBHOOK_BYTES + 1)}}
        response = await client.post("/telegram/webhook", json=huge, headers=signed)
        assert response.status_code == 413

        async def chunks():  # no Content-Length: counted while it streams in
            yield b'{"update_id": 99, "message": {"text": "'
            for _ in range(MAX_WEBHOOK_BYTES // 65536 + 2):
                yield b"y" * 65536
            yield b'"}}'

        response = await client.post("/telegram/webhook", content=chunks(),
                                     headers={**signed, "content-type": "application/json"})
        assert response.status_code == 413
        with Session(app.db) as db:
            assert db.exec(select(func.count()).select_from(ProcessedInbound)).one() == 0
            assert db.exec(select(func.count()).select_from(Resident)).one() == 0
        assert not tg.sent_messages(7301)
        ok = await client.post("/telegram/webhook", json=update, headers=signed)  # the real one still works
        assert ok.status_code == 200 and replies(tg, 7301)


def test_flood_guard_token_bucket():
    now = [0.0]
    guard = FloodGuard(20, timedelta(seconds=10), clock=lambda: now[0])
    verdicts = []
    for _ in range(50):  # a script: 50 messages in 2.5 s
        verdicts.append(guard.admit("telegram", "1"))
        now[0] += 0.05
    counts = collections.Counter(verdicts)
    assert counts[PASS] == 20 + 4 and counts[NOTICE] == 1 and counts[DROP] == 25  # 2 tokens a second refill
    assert verdicts[:20] == [PASS] * 20 and verdicts.index(NOTICE) >= 20
    assert guard.admit("telegram", "2") == PASS and guard.admit("whatsapp", "1") == PASS  # others unaffected
    for _ in range(100):  # the flood goes on: one notice per window, never more
        verdicts.append(guard.admit("telegram", "1"))
        now[0] += 0.2
    assert collections.Counter(verdicts)[NOTICE] == 3
    now[0] += 10  # a quiet window: the bucket is full again
    assert [guard.admit("telegram", "1") for _ in range(20)] == [PASS] * 20
    steady = FloodGuard(20, 10, clock=lambda: now[0])
    for _ in range(200):  # 2 messages a second for 100 s: never throttled
        assert steady.admit("whatsapp", "x") == PASS
        now[0] += 0.5
    assert all(guard.admit("console", "me") == PASS for _ in range(100))  # the local terminal
    retried = FloodGuard(2, 10, clock=lambda: now[0])  # a step retried after a database error, a re-delivery
    assert [retried.admit("telegram", "r", "u1") for _ in range(5)] == [PASS] * 5
    assert retried.admit("telegram", "r", "u2") == PASS and retried.admit("telegram", "r", "u3") == NOTICE


def test_flood_guard_keeps_only_active_accounts():
    """Memory follows the accounts active lately, not every resident ever seen; forgetting an idle
    account changes no verdict (its bucket was full again) and a flood goes on being throttled."""
    now = [0.0]
    guard = FloodGuard(5, 10, clock=lambda: now[0])
    assert [guard.admit("telegram", "flood", f"f{i}") for i in range(7)] == [PASS] * 5 + [NOTICE, DROP]
    sizes, flood = [], []
    for i in range(2_000):  # a new resident every 0.25 s for 500 s; the flood goes on at 1/s meanwhile
        now[0] += 0.25
        assert guard.admit("telegram", str(i), f"u{i}") == PASS
        sizes.append(len(guard))
        if i % 4 == 0:
            flood.append(guard.admit("telegram", "flood"))
    assert max(sizes) <= 10 / 0.25 + 2  # the accounts of the last window, and the flood
    assert {NOTICE, DROP} <= set(flood[-20:])  # its bucket was never forgotten: still throttled
    retried = guard._buckets.get(("telegram", "1999"))
    assert guard.admit("telegram", "1999", "u1999") == PASS and retried.tokens == 4  # a retried step: no token
    now[0] += 10
    assert guard.admit("telegram", "late") == PASS and len(guard) == 1  # every idle bucket is gone
    capped = FloodGuard(5, 10, clock=lambda: now[0])
    capped._buckets.limit = 100
    for i in range(1_000):  # more accounts at once than the cap: the least recently used leave
        capped.admit("whatsapp", str(i))
    assert len(capped) == 100


def test_flood_settings_are_validated(make_settings):
    settings = make_settings()
    assert (settings.flood_messages, settings.flood_window) == (20, timedelta(seconds=10))
    assert make_settings(flood_messages=5, flood_window="1m").flood_window == timedelta(minutes=1)
    for bad, name in ((dict(flood_messages=0), "FLOOD_MESSAGES"), (dict(flood_window="0.5s"), "FLOOD_WINDOW"),
                      (dict(flood_window="often"), "FLOOD_WINDOW")):
        with pytest.raises(SettingsError, match=name):
            make_settings(**bad)


async def test_a_flood_is_throttled_and_others_are_answered(running, tg, figure):
    """A script sends 50 messages at once from one Telegram account: about FLOOD_MESSAGES are
    processed, the rest are not, and the account gets exactly one notice in its language; another
    resident onboarding at the same time is answered normally and quickly."""
    app, channel = await running()
    flooder, other = 9300, 9301
    await say(tg, flooder, "/start", 1)   # English, from the phone's language
    per_message = len(replies(tg, flooder))
    await say(tg, flooder, "spam", per_message + 1)  # what one unusable message gets back
    await asyncio.sleep(0.3)
    before = len(replies(tg, flooder))
    per_message = before - per_message
    started = time.monotonic()
    flood = [tg.push_text(flooder, f"spam {i}", language_code="en")["update_id"] for i in range(50)]
    took = [await say(tg, other, text, n, lang="tr") for text, n in (("/start", 1), ("1", 2))]
    await tg.async_wait_for(lambda s: set(flood) <= set(channel.completed), timeout=30)
    flood_took = time.monotonic() - started
    await asyncio.sleep(0.5)
    notice = t_in("en", "flood.slow_down")
    got = replies(tg, flooder)[before:]
    with Session(app.db) as db:
        processed = len(db.exec(select(ProcessedInbound.external_id).where(
            ProcessedInbound.external_id.in_([str(u) for u in flood]))).all())
    figure(f"flood: 50 messages in {flood_took:.1f}s, {processed} processed, {got.count(notice)} notice; "
          f"the other resident answered in {max(took):.2f}s")
    assert got.count(notice) == 1
    assert 18 <= processed <= 20 + 2 * flood_took + 1  # the bucket, plus what it refilled meanwhile
    assert len(got) - 1 == per_message * processed  # answers to processed messages only, and the notice
    assert replies(tg, other)[0].splitlines()[0] == t_in("tr", "onboarding.choose_language")
    assert replies(tg, other)[1] == notice_summary(app, "tr")
    assert notice not in replies(tg, other)
    assert max(took) < 5


async def test_a_whatsapp_flood_is_throttled_in_arabic(make_app):
    """The same guard on WhatsApp (it sits in App.handle): an Arabic-speaking resident's flood gets
    one notice in Arabic; a resident writing meanwhile is answered."""
    from tests.test_whatsapp import AYSE, MEHMET, SENDER, WA, free_port

    with FakeTwilioServer() as twilio:
        port = free_port()
        app = make_app(twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                       twilio_whatsapp_from=SENDER, twilio_api_url=twilio.root,
                       public_base_url=f"http://127.0.0.1:{port}", http_port=port, flood_messages=10)
        add_configured_channels(app)
        for channel in app.channels.values():
            await channel.start()
        h = WA(app, await serve_http(app), twilio)
        try:
            await h.say("Merhaba", AYSE)
            await h.say("3", AYSE)  # العربية
            started = time.monotonic()
            before = len(twilio.sent_to(AYSE))
            sids = []
            for i in range(25):
                params = twilio.inbound(AYSE, f"رسالة {i}")
                sids.append(params["MessageSid"])
                response = await h.post("/whatsapp/twilio", params)
                assert response.status_code == 200
                if i == 12:
                    answered = await h.say("Merhaba", MEHMET)
            await h.channel.idle()
            took = time.monotonic() - started
            with Session(app.db) as db:
                processed = len(db.exec(select(ProcessedInbound).where(ProcessedInbound.external_id.in_(sids))).all())
                waiting = db.exec(select(func.count()).select_from(InboundQueue)).one()
        finally:
            await h.close()
    bodies = [m.body for m in twilio.sent_to(AYSE)[before:]]
    notice = t_in("ar", "flood.slow_down")
    assert bodies.count(notice) == 1
    assert 1 <= processed <= 8 + took + 1  # the onboarding used 2 of the 10 tokens; 1 a second refills
    assert waiting == 0  # the throttled ones left the inbox too: its job will not handle them later
    assert answered and t_in("tr", "onboarding.choose_language") in answered[0].body


# ---------------------------------------------------------------- hostile input at every state
HOSTILE = [
    ("empty", Kind.TEXT, ""), ("blank", Kind.TEXT, " \n\t "), ("10,000 characters", Kind.TEXT, "ş" * 10_000),
    ("control characters", Kind.TEXT, "\x00\x07\x1b[2J\x7f\u200b\ufeff"),
    ("right-to-left", Kind.TEXT, "\u202eمرحبا، حفرة في الشارع\u202c \u200f"),
    ("emoji", Kind.TEXT, "🚧🕳️👍🏽👨‍👩‍👧"), ("SQL", Kind.TEXT, "'); DROP TABLE resident;-- 1 OR 1=1"),
    ("/iptal", Kind.COMMAND, "iptal"), ("/start", Kind.COMMAND, "start"), ("/menu", Kind.COMMAND, "menu"),
    ("/yardim", Kind.COMMAND, "yardim"), ("/dil", Kind.COMMAND, "dil"), ("/verilerim", Kind.COMMAND, "verilerim"),
    ("/verilerimisil", Kind.COMMAND, "verilerimisil"), ("unknown command", Kind.COMMAND, "'; select 1;--"),
]


def test_hostile_input_at_every_state(make_app, figure):
    """Every registered state (staff ones as staff), each hostile input: the step answers, in the
    resident's language, never with the engine's apology (a crashed state), and leaves a registered
    state. Each case runs in a savepoint rolled back after it, from the state with nothing collected."""
    app = make_app()
    address = "hostile"
    for text in ("/start", "1", "1", "1"):
        kind = Kind.COMMAND if text.startswith("/") else Kind.TEXT
        app.engine.handle(Inbound(channel="console", address=address, kind=kind, text=text, command=text[1:]))
    with transaction(app.db) as db:
        db.add(Staff(console=address, role="admin"))
    apologies = {translator(lang)("engine.error") for lang in LANGUAGES}
    states = app.registry.states
    own = {lang: set(translator(lang)._catalog.values()) for lang in LANGUAGES}  # short ones: "أين؟"
    problems = []
    cases = 0
    with transaction(app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == address)).one()
        resident = db.get(Resident, identity.resident_id)
        assert resident.onboarded_at is not None
        for lang in ("tr", "ar"):
            resident.locale = lang
            for name in sorted(states):
                for label, kind, value in HOSTILE:
                    nested = db.begin_nested()
                    try:
                        ctx = Ctx(session=db, config=app.engine.config, resident=resident, identity=identity, state=name,
                                  data={}, now=utcnow())
                        msg = Inbound(channel="console", address=address, kind=kind,
                                      text=value if kind == Kind.TEXT else f"/{value}",
                                      command=value if kind == Kind.COMMAND else "")
                        try:
                            result = step(ctx, msg)
                        except Exception as exc:  # noqa: BLE001  (a crashed state: the runtime would apologise)
                            problems.append((lang, name, label, repr(exc)[:120], "crashed"))
                            cases += 1
                            continue
                        texts = [out.text for out in result.replies]
                        in_language = any(signature(lang).search(text) or text in own[lang] for text in texts)
                        if not texts or apologies & set(texts) or result.state not in states or not in_language:
                            problems.append((lang, name, label, texts[:1], result.state))
                        cases += 1
                    finally:
                        nested.rollback()
        db.rollback()
    figure(f"hostile input: {len(HOSTILE)} inputs x {len(states)} states x 2 languages = {cases} steps, "
           f"{len(problems)} without a proper answer")
    assert len(states) > 20 and cases == 2 * len(states) * len(HOSTILE)
    assert problems == [], "\n".join(map(str, problems))
