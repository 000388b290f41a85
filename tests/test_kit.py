"""The channel kit (handlers/kit.py) and what every sender declares (handlers/delivery.py), through the
real adapters: a long text split by the same rule on Telegram (the real PTB Bot against the fake
Bot API server) and WhatsApp (the real twilio-python client against the fake Twilio API); the same
typed commands read the same on the three channels; the platforms' failures as one SendFailure
on both; one resident's messages in order and nothing kept per address; a database restarted or
locked met the same way on every channel (one retry policy); a typed number answering a proactive
message where, and only where, the channel says so."""
from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import sqlite3
import time
from datetime import timedelta

import httpx
import pytest
from telegram import Bot, Update
from telegram.error import BadRequest
from twilio.base.exceptions import TwilioRestException

from bot.app import add_configured_channels
from bot.http import serve_http
from conversations.i18n import t_in
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.proactive import answer_by_number
from handlers import console, telegram, whatsapp
from handlers.console import ConsoleChannel
from handlers.delivery import ChannelLimits, SendError, SendFailure
from handlers.kit import AddressLocks, parse_command, split_text, utf16_len
from handlers.telegram import TelegramSender
from handlers.whatsapp import WhatsAppSender
from storage import outbox
from storage.db import DB_RETRY, transaction
from tests.fakes.telegram_api import FakeTelegramServer
from tests.fakes.twilio_api import FakeTwilioServer, signature
from tests.test_faults import replies
from tests.test_faults_process import DOWNTIME, cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")
AYSE = "whatsapp:+905551112233"
SENDER = "whatsapp:+905550000000"
# 1,200 words, an emoji every fourth word: 9,689 characters, 9,989 UTF-16 code units
LONG = " ".join(f"{'çukur' if i % 4 else '🚧'}{i}" for i in range(1200))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def twilio():
    with FakeTwilioServer() as server:
        yield server


def twilio_settings(twilio: FakeTwilioServer, port: int = 0) -> dict:
    port = port or free_port()
    return dict(twilio_account_sid=twilio.account_sid, twilio_auth_token=twilio.auth_token,
                twilio_whatsapp_from=SENDER, twilio_api_url=twilio.root,
                public_base_url=f"http://127.0.0.1:{port}", http_port=port)


def ends_on_a_word(piece: str, text: str) -> bool:
    """The piece is whole words of text: what follows it in text is a space or nothing."""
    at = text.index(piece)
    return text[at + len(piece):at + len(piece) + 1] in ("", " ")


# ---------------------------------------------------------------- long texts
def test_split_text_measures_what_it_is_given():
    assert split_text("😀" * 6, 4) == ["😀😀😀😀", "😀😀"]              # characters
    assert split_text("😀" * 6, 4, utf16_len) == ["😀😀", "😀😀", "😀😀"]  # UTF-16: an emoji counts two
    assert split_text("çok güzel şişe", 6, utf16_len) == ["çok", "güzel", "şişe"]  # Turkish letters count one
    with pytest.raises(ValueError):
        split_text("x", 0)


async def test_a_long_text_is_split_the_same_way_on_telegram_and_whatsapp(tg, twilio, make_settings):
    """The same text over both platforms: each cuts it with the kit's one rule at its own limit,
    counted in UTF-16 as both platforms count (counted in characters, the first pieces would be
    refused: the fake servers answer 400 and 21617 over the limit, as the platforms do)."""
    assert (len(LONG), utf16_len(LONG)) == (9689, 9989)
    by_characters = {limit: split_text(LONG, limit)[0] for limit in (telegram.TEXT_LIMIT, whatsapp.BODY_LIMIT)}
    async with Bot(tg.token, base_url=f"{tg.root}/bot", base_file_url=f"{tg.root}/file/bot") as bot:
        await TelegramSender(bot).send("42", Outbound(text=LONG))
        with pytest.raises(BadRequest, match="(?i)message is too long"):
            await bot.send_message(42, by_characters[telegram.TEXT_LIMIT])
    wa_sender = WhatsAppSender(make_settings(**twilio_settings(twilio)), None)
    await wa_sender.send(AYSE, Outbound(text=LONG))
    with pytest.raises(TwilioRestException) as refused:
        await asyncio.to_thread(wa_sender.client.messages.create, from_=SENDER, to=AYSE,
                                body=by_characters[whatsapp.BODY_LIMIT])
    assert refused.value.code == 21617

    by_platform = {"telegram": (tg.delivered_texts(42), telegram.TEXT_LIMIT),
                   "whatsapp": (twilio.bodies(AYSE), whatsapp.BODY_LIMIT)}
    for platform, (pieces, limit) in by_platform.items():
        assert pieces == split_text(LONG, limit, utf16_len), platform
        assert len(pieces) == -(-utf16_len(LONG) // limit), platform  # as few as the limit allows
        assert all(utf16_len(p) <= limit for p in pieces[:-1]), platform
        assert all(utf16_len(p) > limit - 12 for p in pieces[:-1]), platform  # full, cut at the last word
        assert all(ends_on_a_word(p, LONG) for p in pieces), platform
        assert " ".join(pieces) == LONG, platform


# ---------------------------------------------------------------- commands
COMMANDS = [  # typed → (kind, command, text) on every channel
    ("/Bildir çukur var", (Kind.COMMAND, "bildir", "/bildir çukur var")),
    ("/start@katilim_test_bot ev_12", (Kind.COMMAND, "start", "/start ev_12")),
    ("  /İPTAL  ", (Kind.COMMAND, "İPTAL".lower(), "/" + "İPTAL".lower())),
    ("/bagla\n1234567890", (Kind.COMMAND, "bagla", "/bagla 1234567890")),
    ("/yardim", (Kind.COMMAND, "yardim", "/yardim")),
    ("/", (Kind.TEXT, "", "/")),
    ("//x", (Kind.TEXT, "", "//x")),
    ("yol/kaldırım", (Kind.TEXT, "", "yol/kaldırım")),
]


async def test_the_same_typed_commands_read_the_same_on_every_channel(tg):
    bot = Bot(tg.token, base_url=f"{tg.root}/bot")
    form = FakeTwilioServer(account_sid="AC" + "a" * 32).inbound
    for typed, expected in COMMANDS:
        seen = {
            "telegram": telegram.to_inbound(Update.de_json(tg.push_text(9, typed), bot)),
            "whatsapp": whatsapp.to_inbound(form(AYSE, typed)),
            "console": console.parse_line("ayse", typed),
        }
        for channel, msg in seen.items():
            got = (msg.kind, msg.command, msg.text.strip() if msg.kind == Kind.TEXT else msg.text)
            assert got == expected, (channel, typed, got)
    assert parse_command("/Start@katilim_bot ev_12") == ("start", "ev_12")
    assert parse_command("/@katilim_bot") is None


# ---------------------------------------------------------------- failures
async def test_the_platforms_failures_are_one_send_failure_on_both_channels(tg, twilio, make_settings):
    """A server error, a rate limit, a recipient who blocked us or sent STOP, a request the
    platform refuses: the same SendFailure on Telegram and WhatsApp, from the fake servers' answers
    (and WhatsApp's window, which Telegram has not)."""
    async with Bot(tg.token, base_url=f"{tg.root}/bot", base_file_url=f"{tg.root}/file/bot") as bot:
        tg_sender = TelegramSender(bot)
        wa_sender = WhatsAppSender(make_settings(**twilio_settings(twilio)), None)
        faults = {  # failure: (what the Bot API does, what Twilio does)
            SendFailure.RETRYABLE: (lambda: tg.fail_next(1, 503), lambda: twilio.fail_next(503)),
            SendFailure.RATE_LIMITED: (lambda: setattr(tg, "rate_limit_per_second", 1),
                                       lambda: twilio.fail_next(63018)),
            SendFailure.UNREACHABLE: (lambda: tg.block_chat(77), lambda: twilio.fail_next(21610)),
            SendFailure.PERMANENT: (lambda: tg.fail_next(1, 400, "Bad Request: chat not found"),
                                    lambda: twilio.fail_next(21211)),
        }
        for failure, (on_telegram, on_twilio) in faults.items():
            on_telegram()
            with pytest.raises(SendError) as err:
                for _ in range(3):  # the rate limit: more than one a second
                    await tg_sender.send("77" if failure is SendFailure.UNREACHABLE else "42", Outbound(text="x"))
            assert err.value.failure is failure, ("telegram", failure, err.value)
            if failure is SendFailure.RATE_LIMITED:
                assert err.value.retry_after == tg.retry_after
                tg.rate_limit_per_second = None
            on_twilio()
            with pytest.raises(SendError) as err:
                await wa_sender.send(AYSE, Outbound(text="x"))
            assert err.value.failure is failure, ("whatsapp", failure, err.value)
            if failure is SendFailure.RATE_LIMITED:
                assert err.value.retry_after > 0
        twilio.fail_next(63016)
        with pytest.raises(SendError) as err:
            await wa_sender.send(AYSE, Outbound(text="x"))
        assert err.value.failure is SendFailure.WINDOW
    with pytest.raises(TypeError):
        SendError("transient", "a free string is not a failure")  # type: ignore[arg-type]


def test_each_sender_declares_its_limits(make_settings, twilio):
    settings = make_settings(telegram_messages_per_second=25, telegram_per_chat_per_second=0.5,
                             telegram_per_chat_burst=2, **twilio_settings(twilio), twilio_messages_per_second=12)
    assert TelegramSender(Bot("1:x")).limits(settings) == ChannelLimits(25, 0.5, 2)
    assert WhatsAppSender(settings, None).limits(settings) == ChannelLimits(12)
    assert console.ConsoleSender(io.StringIO()).limits(settings) == ChannelLimits()


# ---------------------------------------------------------------- one address at a time
async def test_address_locks_keep_order_and_nothing_per_quiet_address():
    locks, order = AddressLocks(), []

    async def handle(address: str, n: int, pause: float) -> None:
        async with locks.hold(address):
            await asyncio.sleep(pause)
            order.append((address, n))

    tasks = [asyncio.create_task(handle("a", n, 0.03 - n * 0.01)) for n in range(3)]
    tasks.append(asyncio.create_task(handle("b", 0, 0)))
    await asyncio.sleep(0)
    assert len(locks) == 2
    await asyncio.gather(*tasks)
    assert [n for a, n in order if a == "a"] == [0, 1, 2]  # in arrival order, though later ones are quicker
    assert order[0] == ("b", 0)  # another address did not wait
    assert len(locks) == 0


# ---------------------------------------------------------------- the database unavailable
class Channels:
    """Telegram, WhatsApp and the terminal on one app, started as `katilim run` starts them."""

    def __init__(self, app, tg: FakeTelegramServer, twilio: FakeTwilioServer) -> None:
        self.app, self.tg, self.twilio = app, tg, twilio
        self.telegram = app.channels["telegram"]
        self.whatsapp = app.channels["whatsapp"]
        read, self._write = os.pipe()
        self.screen = io.StringIO()
        self.console = ConsoleChannel(app, "ayse", stdin=os.fdopen(read), stdout=self.screen)
        app.add_channel(self.console)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{app.settings.http_port}", timeout=60)

    async def start(self) -> None:
        for channel in (self.telegram, self.whatsapp):
            await channel.start()
        self.server = await serve_http(self.app)
        self.chat = asyncio.create_task(self.console.run())

    async def stop(self) -> None:
        os.close(self._write)
        await asyncio.wait_for(self.chat, 30)
        await self.http.aclose()
        for channel in (self.whatsapp, self.telegram):
            await channel.stop()
        self.server.should_exit = True
        await self.server.wait_closed()

    def type_in_terminal(self, line: str) -> None:
        os.write(self._write, (line + "\n").encode())

    async def post_whatsapp(self, body: str) -> int:
        params = self.twilio.inbound(AYSE, body)
        url = self.app.settings.public_base_url + whatsapp.WEBHOOK_PATH
        response = await self.http.post(whatsapp.WEBHOOK_PATH, data=params,
                                        headers={"X-Twilio-Signature": signature(self.twilio.auth_token, url, params)})
        return response.status_code

    def answered(self, text: str) -> dict[str, bool]:
        return {"telegram": any(text in r for r in replies(self.tg, 9600)),
                "whatsapp": any(text in b for b in self.twilio.bodies(AYSE)),
                "console": text in self.screen.getvalue()}

    async def wait_answered(self, text: str, timeout: float) -> float:
        began = time.monotonic()
        await self.tg.async_wait_for(lambda _: all(self.answered(text).values()), timeout=timeout)
        return time.monotonic() - began

    async def say_everywhere(self, text: str) -> None:
        self.tg.push_text(9600, text, language_code="tr")
        assert await self.post_whatsapp(text) == 200
        self.type_in_terminal(text)


@pytest.fixture
async def three_channels(make_app, tg, twilio):
    started = []

    async def start(**overrides) -> Channels:
        app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root, **twilio_settings(twilio), **overrides)
        add_configured_channels(app)
        harness = Channels(app, tg, twilio)
        await harness.start()
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness.stop()


def retries_by_channel(caplog) -> dict[str, list[float]]:
    """The waits the retry policy logged, per channel."""
    waits: dict[str, list[float]] = {}
    for record in caplog.records:
        found = re.search(r"database busy or unreachable .*; handling (\w+) message.* again in ([\d.]+)s",
                          record.getMessage())
        if found:
            waits.setdefault(found[1], []).append(float(found[2]))
    return waits


async def test_a_restarted_postgresql_is_met_the_same_way_on_every_channel(cluster, three_channels, caplog, figure):
    """Our own PostgreSQL cluster stopped while a resident writes on Telegram, WhatsApp (its
    message accepted just before) and the terminal, then started again DOWNTIME seconds later: each
    channel's step meets the outage and is run again after the same waits (storage.db.DB_RETRY),
    and every message is answered once the server is back."""
    h = await three_channels(database_url=cluster.url)
    await h.say_everywhere("/start")
    welcome = t_in("tr", "onboarding.choose_language").splitlines()[0]
    await h.wait_answered(welcome, 30)
    # The WhatsApp message is accepted (stored before the webhook is answered) with the server up;
    # its step waits for the resident's turn, which comes once the server is down.
    async with h.whatsapp._locks.hold(AYSE):
        assert await h.post_whatsapp("Türkçe") == 200
        await asyncio.to_thread(cluster.stop_server)
        down = time.monotonic()
    h.tg.push_text(9600, "Türkçe", language_code="tr")
    h.type_in_terminal("Türkçe")
    await asyncio.sleep(DOWNTIME)
    await asyncio.to_thread(cluster.start_server)
    back = time.monotonic()
    notice = t_in("tr", "notice.summary").splitlines()[0][:40]
    after = await h.wait_answered(notice, 90)
    waits = retries_by_channel(caplog)
    figure(f"PostgreSQL down {back - down:.1f}s: telegram, whatsapp and the terminal answered {after:.1f}s after "
           f"it was back; waits before each try again: {waits}")
    assert set(waits) == {"telegram", "whatsapp", "console"}
    for channel, seen in waits.items():
        assert seen == list(DB_RETRY.delays[:len(seen)]), channel  # the one policy's waits, in its order
        assert sum(seen) >= DOWNTIME - 1, channel  # tried again through the whole outage


async def test_a_locked_sqlite_is_met_the_same_way_on_every_channel(three_channels, sqlite_url, figure):
    """Another connection holds the SQLite file's write lock for 2 s while a resident writes on
    each channel: every channel's step (and WhatsApp's storing the message before answering its
    webhook) waits for the lock and goes on right after it is released, nothing lost."""
    h = await three_channels(database_url=sqlite_url)
    await h.say_everywhere("/start")
    welcome = t_in("tr", "onboarding.choose_language").splitlines()[0]
    await h.wait_answered(welcome, 30)
    lock = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), timeout=5, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    whatsapp_webhook = asyncio.create_task(h.post_whatsapp("Türkçe"))
    h.tg.push_text(9600, "Türkçe", language_code="tr")
    h.type_in_terminal("Türkçe")
    await asyncio.sleep(2.0)
    notice = t_in("tr", "notice.summary").splitlines()[0][:40]
    assert not any(h.answered(notice).values())
    lock.execute("COMMIT")
    lock.close()
    after = await h.wait_answered(notice, 30)
    assert await whatsapp_webhook == 200
    figure(f"SQLite locked 2s: telegram, whatsapp and the terminal answered {after:.2f}s after it was released")
    assert after < 5


# ---------------------------------------------------------------- a number answering a proactive message
async def test_a_number_answers_a_proactive_message_where_the_channel_says_so(make_app, db_url):
    """The rule is the conversation's, the same on any channel (conversations/proactive.py); a
    channel turns it on with one line (`numbers_answer_proactive`): WhatsApp and the terminal do.
    A typed yes or no word in any language answers it as well."""
    app = make_app(database_url=db_url)
    terminal = ConsoleChannel(app, "ayse", stdin=io.StringIO(), stdout=io.StringIO())
    app.add_channel(terminal)
    question = Outbound(text="Sorun çözüldü mü?", choices=[Choice("rs:yes:BCA-2026-000001", "Evet"),
                                                         Choice("rs:no:BCA-2026-000001", "Hayır")])
    def sent(channel: str, address: str, out: Outbound) -> None:
        """A message delivered to the address, as the dispatcher leaves it."""
        with transaction(app.db) as db:
            outbox.enqueue(db, channel, address, out)
        with transaction(app.db) as db:
            rows = outbox.claim(db, "test", channel, 10, timedelta(seconds=30), address=address)
            outbox.mark_sent(db, [r.id for r in rows], [f"p{r.id}" for r in rows])

    for channel, address in (("console", "ayse"), ("whatsapp", AYSE), ("console", "mehmet")):
        sent(channel, address, question)
    sent("console", "mehmet", Outbound(text="Menü", choices=[Choice("report", "Bildir")]))
    def read(channel: str, address: str, text: str) -> Inbound:
        msg = Inbound(channel=channel, address=address, kind=Kind.TEXT, text=text)
        with transaction(app.db) as db:
            answer_by_number(db, msg, app.registry.global_choices)
        return msg

    assert read("whatsapp", AYSE, " 2 ").choice == "rs:no:BCA-2026-000001"
    assert read("console", "ayse", "1").choice == "rs:yes:BCA-2026-000001"   # channel-agnostic
    assert read("console", "ayse", "3").kind == Kind.TEXT                    # no such choice
    assert read("console", "ayse", "Evet").choice == "rs:yes:BCA-2026-000001"  # a yes word, any language
    assert read("console", "ayse", "HAYIR").choice == "rs:no:BCA-2026-000001"
    assert read("whatsapp", AYSE, "no").choice == "rs:no:BCA-2026-000001"
    assert read("console", "ayse", "نعم").choice == "rs:yes:BCA-2026-000001"
    assert read("console", "ayse", "evet ama").kind == Kind.TEXT             # other words are the engine's
    assert read("console", "mehmet", "1").kind == Kind.TEXT                  # the latest message decides
    assert read("telegram", "42", "1").kind == Kind.TEXT                     # nothing sent there

    assert terminal.numbers_answer_proactive  # the one line a channel needs
    typed = Inbound(channel="console", address="ayse", kind=Kind.TEXT, text="1")
    await app.handle(typed)
    assert (typed.kind, typed.choice) == (Kind.CHOICE, "rs:yes:BCA-2026-000001")
    terminal.numbers_answer_proactive = False  # a channel without it: the number is the engine's
    sent("console", "ayse", question)  # (the step's reply became the latest message: asked again)
    typed = Inbound(channel="console", address="ayse", kind=Kind.TEXT, text="1")
    await app.handle(typed)
    assert typed.kind == Kind.TEXT
