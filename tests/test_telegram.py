"""The Telegram channel: the real python-telegram-bot Application, started as `katilim run` starts
it, against the fake Bot API server (tests/fakes/telegram_api.py); webhook mode through the real
HTTP server; TelegramSender's rendering and error mapping; update conversion; media download."""
from __future__ import annotations

import asyncio
import hashlib
import json
from functools import partial

import httpx
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlmodel import Session, select
from telegram import Bot, Update
from telegram.request import HTTPXRequest

from bot.app import add_configured_channels
from bot.features import FEATURES, Feature, build_registry
from bot.flood import FloodGuard
from conversations.i18n import t_in
from conversations.messages import Attachment, Choice, Kind, Outbound
from conversations.registry import Router
from conversations.step import Stay
from handlers.delivery import SendError, SendFailure
from handlers.kit import utf16_len
from handlers.telegram import (
    BACKLOG,
    MediaTooLarge,
    TelegramSender,
    command_menu,
    keyboard_rows,
    split_message,
    to_inbound,
    webhook_secret,
)
from storage.models import ChannelIdentity, ConsentRecord, ConversationSession, ProcessedInbound, Resident
from tests.fakes.telegram_api import FakeTelegramServer
from tests.media_support import plain_jpeg
from tests.support.telegram import TelegramChat
from tests.support.texts import notice_summary, onboarding_thanks

PURPOSES = ("reports", "volunteering", "reminders", "announcements")
BASE_MENU = {"tr": ["menu", "yardim", "iptal", "dil", "verilerim", "verilerimisil"],
             "en": ["menu", "help", "cancel", "language", "mydata", "deletemydata"],
             "ar": ["menu", "help", "cancel", "language", "mydata", "deletemydata"]}


# ---------------------------------------------------------------- fixtures and helpers
@pytest.fixture
async def started(make_app, tg):
    """Build, add channels and start them as `katilim run` does; yield (app, channel)."""
    apps = []

    async def start(**overrides):
        app = make_app(telegram_bot_token=tg.token, telegram_api_url=tg.root, **overrides)
        add_configured_channels(app)
        channel = app.channels["telegram"]
        await channel.start()
        apps.append(channel)
        return app, channel

    yield start
    for channel in apps:
        await channel.stop()


def keyboard(call) -> list[list[tuple[str, str]]]:
    markup = call.params.get("reply_markup") or {}
    return [[(b["text"], b["callback_data"]) for b in row] for row in markup.get("inline_keyboard", [])]


def buttons(call) -> dict[str, str]:
    """callback data → label."""
    return {data: label for row in keyboard(call) for label, data in row}




def texts(calls) -> list[str]:
    return [c.text for c in calls if c.text is not None]


def resident_of(app, chat_id) -> Resident | None:
    with Session(app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == "telegram",
                                                         ChannelIdentity.address == str(chat_id))).first()
        return db.get(Resident, identity.resident_id) if identity else None


def session_of(app, resident_id) -> ConversationSession | None:
    with Session(app.db) as db:
        return db.get(ConversationSession, resident_id)


def consents_of(app, resident_id) -> dict[str, bool]:
    with Session(app.db) as db:
        rows = db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == resident_id)
                       .order_by(ConsentRecord.id)).all()
    return {r.purpose: r.granted for r in rows}


def hood_key(app, name: str) -> str:
    return next(n.key for n in app.catalog.neighbourhoods if n.name == name)


async def onboard(chat: TelegramChat, consent: str = "all", lang: str = "tr") -> None:
    await chat.say("/start")
    await chat.tap(f"lang:{lang}")
    replies = await chat.tap(consent)
    if consent != "none":
        assert "skip" in buttons(replies[-1])
        await chat.tap("skip")


# ---------------------------------------------------------------- the conversation through Telegram
async def test_onboarding_in_english_choosing_consents_one_by_one(started, tg, db_url):
    app, channel = await started(database_url=db_url)
    en = partial(t_in, "en")
    chat = TelegramChat(tg, channel, 5001, language_code="en", first_name="Jane")

    first = await chat.say("/start")
    assert len(first) == 1
    assert first[0].text.splitlines()[0] == en("onboarding.choose_language")
    assert buttons(first[0]) == {"lang:tr": "Türkçe", "lang:en": "✓ English", "lang:ar": t_in("ar", "language.name")}

    notice = await chat.tap("lang:en")
    # the tapped message lost its buttons and shows the choice
    edit = tg.calls_of("editMessageText")[-1]
    assert edit.params["message_id"] == first[0].response["result"]["message_id"]
    assert edit.params["text"].endswith("\n\n→ ✓ English") and "reply_markup" not in edit.params
    assert "reply_markup" not in tg._messages[(5001, edit.params["message_id"])]
    assert tg.calls_of("answerCallbackQuery")
    assert buttons(notice[-1]) == {"all": en("notice.accept_all"), "choose": en("notice.choose"),
                                   "none": en("notice.refuse")}

    await chat.tap("choose")
    answers = {"reports": "yes", "volunteering": "no", "reminders": "yes", "announcements": "no"}
    for purpose in PURPOSES:
        prompt = chat.last_prompt()
        assert en(f"consent.purpose.{purpose}") in prompt.text
        assert buttons(prompt) == {"yes": en("common.yes"), "no": en("common.no")}
        replies = await chat.tap(answers[purpose])
    assert texts(replies)[0] == onboarding_thanks("en", ["reports", "reminders"])
    page1 = replies[-1]
    assert page1.text == en("mahalle.prompt")
    names1 = [label for data, label in buttons(page1).items() if data.startswith("m:")]
    assert len(names1) == 8 and "page:next" in buttons(page1)
    assert any(len(row) == 2 for row in keyboard(page1))  # two columns

    page2 = (await chat.tap("page:next"))[-1]
    names2 = [label for data, label in buttons(page2).items() if data.startswith("m:")]
    assert names2 and not set(names1) & set(names2)
    assert "page:prev" in buttons(page2)

    saved = await chat.say("kozagac")
    assert texts(saved)[0] == en("mahalle.saved", mahalle="Kozağaç")
    assert saved[-1].text == en("menu.title")

    resident = resident_of(app, 5001)
    assert resident.locale == "en" and resident.display_name == "Jane" and resident.onboarded_at is not None
    assert resident.mahalle == hood_key(app, "Kozağaç")
    assert consents_of(app, resident.id) == {p: answers[p] == "yes" for p in PURPOSES}
    assert session_of(app, resident.id).state == "menu"


@pytest.mark.parametrize("consent, typed", [("all", "KOZAĞAÇ"), ("none", None)])
async def test_onboarding_all_or_none(started, tg, consent, typed):
    app, channel = await started()
    tr = partial(t_in, "tr")
    chat = TelegramChat(tg, channel, 5002)
    first = await chat.say("/start")
    assert first[0].text.splitlines()[0] == tr("onboarding.choose_language")
    await chat.tap("lang:tr")
    replies = await chat.tap(consent)
    resident = resident_of(app, 5002)
    assert consents_of(app, resident.id) == {p: consent == "all" for p in PURPOSES}
    if typed is None:
        assert texts(replies)[0] == tr("onboarding.no_consent")
        assert replies[-1].text == tr("menu.title")
        assert resident.mahalle is None
        return
    assert replies[-1].text == tr("mahalle.prompt")
    saved = await chat.say(typed)
    assert texts(saved)[0] == tr("mahalle.saved", mahalle="Kozağaç")
    assert resident_of(app, 5002).mahalle == hood_key(app, "Kozağaç")


async def test_cancel_mid_flow_keeps_nothing(started, tg):
    app, channel = await started()
    tr = partial(t_in, "tr")
    chat = TelegramChat(tg, channel, 5003)
    await chat.say("/start")
    cancelled = await chat.say("/iptal")  # during onboarding: says so and asks the language again
    assert texts(cancelled)[0] == tr("cancel.onboarding")
    await chat.tap("lang:tr")
    await chat.tap("all")
    await chat.tap("skip")
    resident = resident_of(app, 5003)
    for cancel in ("/iptal", "İPTAL", "Iptal", "/cancel@katilim_test_bot"):
        await chat.tap("mahalle", message_id=None)  # the menu's mahalle button
        replies = await chat.say("çam")  # two matches (Çamlıkule, Çamlıpınar): a candidates list is being collected
        assert replies[-1].text == tr("mahalle.did_you_mean")
        assert session_of(app, resident.id).data.get("candidates")
        done = await chat.say(cancel)
        assert texts(done)[0] == tr("cancel.done"), cancel
        assert done[-1].text == tr("menu.title")
        session = session_of(app, resident.id)
        assert session.state == "menu"
        assert {k: v for k, v in session.data.items() if not k.startswith("_")} == {}
        assert resident_of(app, 5003).mahalle is None


async def test_language_change_and_help(started, tg):
    app, channel = await started()
    chat = TelegramChat(tg, channel, 5004)
    await onboard(chat)
    picked = await chat.say("/dil")
    assert picked[-1].text == t_in("tr", "language.prompt")
    assert buttons(picked[-1])["lang:tr"] == "✓ Türkçe"
    changed = await chat.tap("lang:ar")
    assert texts(changed)[0] == t_in("ar", "language.changed")
    assert changed[-1].text == t_in("ar", "menu.title")
    helped = await chat.say("/yardim")
    assert t_in("ar", "command.mydata") in helped[0].text
    assert "/mydata" in helped[0].text  # the Arabic menu's command names
    assert resident_of(app, 5004).locale == "ar"


async def test_mydata_export_document(started, tg):
    app, channel = await started()
    chat = TelegramChat(tg, channel, 5005)
    await chat.say("/start")
    await chat.tap("lang:tr")
    await chat.tap("all")
    await chat.say("Kozağaç")
    replies = await chat.say("/verilerim")
    docs = [c for c in replies if c.method == "sendDocument"]
    assert len(docs) == 1 and docs[0].ok
    upload = docs[0].params["document"]
    assert upload["filename"] == "katilim-verilerim.json"
    data = json.loads(upload["content"].decode("utf-8"))
    assert data["resident"]["mahalle"] == hood_key(app, "Kozağaç")
    assert {c["purpose"]: c["granted"] for c in data["consents"]} == {p: True for p in PURPOSES}
    assert data["channels"][0] == {**data["channels"][0], "channel": "telegram", "address": "5005"}
    assert "Kozağaç" in (docs[0].params.get("caption") or texts(replies)[0])


async def test_delete_my_data_with_confirmation(started, tg):
    app, channel = await started()
    tr = partial(t_in, "tr")
    chat = TelegramChat(tg, channel, 5006)
    await onboard(chat)
    old = resident_of(app, 5006)
    question = await chat.say("/verilerimisil")
    assert question[-1].text == tr("data.delete_question")
    kept = await chat.tap("no")
    assert texts(kept)[0] == tr("data.delete_kept")
    assert resident_of(app, 5006).id == old.id

    await chat.say("/verilerimisil")
    gone = await chat.tap("yes")
    assert texts(gone) == [tr("data.deleted")]
    with Session(app.db) as db:
        erased = db.get(Resident, old.id)
        assert erased.anonymised_at is not None and erased.display_name == "" and erased.mahalle is None
        assert not db.exec(select(ChannelIdentity).where(ChannelIdentity.resident_id == old.id)).all()
        assert db.get(ConversationSession, old.id) is None
    fresh = await chat.say("/start")
    assert fresh[0].text.splitlines()[0] == tr("onboarding.choose_language")
    new = resident_of(app, 5006)
    assert new.id != old.id and new.onboarded_at is None and consents_of(app, new.id) == {}


async def test_unusable_input_is_reprompted_in_the_residents_language(started, tg):
    app, channel = await started()
    en = partial(t_in, "en")
    chat = TelegramChat(tg, channel, 5007, language_code="en")
    await chat.say("/start")
    await chat.tap("lang:en")
    resident = resident_of(app, 5007)

    sticker = await chat.push("sticker")
    assert texts(sticker)[0] == en("engine.wrong_kind", what=en("kind.sticker"))
    assert sticker[-1].text == notice_summary(app, "en")
    assert session_of(app, resident.id).state == "onboarding.notice"

    await chat.tap("choose")
    await chat.tap("yes")  # reports granted; now asking about volunteering
    question = chat.last_prompt().text
    assert en("consent.purpose.volunteering") in question

    for push, expected in [
        (lambda: chat.push("photo", b"\xff\xd8\xff\xe0fake jpeg"), en("engine.wrong_kind", what=en("kind.photo"))),
        (lambda: chat.say("x" * 5000), en("engine.too_long", limit=app.settings.max_text_length)),
        (lambda: chat.say("/foo"), en("engine.unknown_command", command="/foo")),
        (lambda: chat.push("location", 38.39, 27.17), en("engine.wrong_kind", what=en("kind.location"))),
    ]:
        replies = [c for c in await push() if c.method != "editMessageText"]
        assert texts(replies) == [expected, question]
        session = session_of(app, resident.id)
        assert session.state == "onboarding.purpose" and session.data["i"] == 1
        assert consents_of(app, resident.id) == {"reports": True}
    assert resident_of(app, 5007).locale == "en"


async def test_duplicates_groups_and_edits_are_ignored(started, tg):
    app, channel = await started()
    chat = TelegramChat(tg, channel, 5008)
    await chat.say("/start")
    before = len(tg.sent_messages())
    # the same update delivered again (Telegram re-sends what it thinks was not received)
    update = Update.de_json(tg.updates[-1], channel.application.bot)
    await channel.application.update_queue.put(update)
    await tg.async_wait_for(lambda s: list(channel.completed).count(update.update_id) == 2)
    assert len(tg.sent_messages()) == before
    with Session(app.db) as db:
        assert len(db.exec(select(ProcessedInbound)).all()) == 1

    group = {"message_id": 1, "date": 1700000000, "text": "/start",
             "chat": {"id": -100123, "type": "group", "title": "Komşular"},
             "from": {"id": 6001, "is_bot": False, "first_name": "Ali"}}
    edited = {**tg._user_message(5008, text="/verilerim"), "edit_date": 1700000001}
    for pushed in (tg.push_update({"message": group}), tg.push_update({"edited_message": edited})):
        await tg.async_wait_for(lambda s, uid=pushed["update_id"]: uid in channel.completed)
    assert len(tg.sent_messages()) == before
    assert resident_of(app, -100123) is None and resident_of(app, 6001) is None


async def test_one_chat_in_order_while_chats_run_concurrently(started, tg):
    app, channel = await started()
    pushed = []
    for chat_id in (5101, 5102, 5103):  # three residents answering quickly, without waiting for replies
        tg._user(chat_id, "Ali", "tr")
    for step in (lambda c: tg.push_text(c, "/start"), lambda c: tg.push_callback(c, "lang:en"),
                 lambda c: tg.push_callback(c, "all"), lambda c: tg.push_text(c, "Kozağaç")):
        for chat_id in (5101, 5102, 5103):
            pushed.append(step(chat_id)["update_id"])
    await tg.async_wait_for(lambda s: set(pushed) <= set(channel.completed), timeout=20)
    for chat_id in (5101, 5102, 5103):
        resident = resident_of(app, chat_id)
        assert (resident.locale, resident.mahalle) == ("en", hood_key(app, "Kozağaç")), tg.delivered_texts(chat_id)
        assert consents_of(app, resident.id) == {p: True for p in PURPOSES}
        assert tg.delivered_texts(chat_id)[-1] == t_in("en", "menu.title")


async def test_nothing_per_chat_stays_in_memory_once_chats_are_quiet(started, tg):
    """A long-running process meets every resident of the city sooner or later: once their chats
    are quiet, none of them is left in memory (PTB's chat/user data and its persistence bookkeeping,
    which PTB keeps even without a persistence, the chat locks, the flood buckets)."""
    app, channel = await started()
    now = [0.0]
    app.flood = FloodGuard(app.settings.flood_messages, app.settings.flood_window, clock=lambda: now[0])
    chats = range(5201, 5231)
    pushed = [tg.push_text(chat_id, "/start")["update_id"] for chat_id in chats]  # concurrently
    await tg.async_wait_for(lambda s: set(pushed) <= set(channel.completed), timeout=20)
    assert all(tg.delivered_texts(chat_id) for chat_id in chats)
    application = channel.application
    assert not application.chat_data and not application.user_data
    # PTB's own record of the chats and users to persist next (no public view of it)
    assert not application._chat_ids_to_be_updated_in_persistence
    assert not application._user_ids_to_be_updated_in_persistence
    assert not channel._locks and not channel._failed
    assert len(app.flood) == len(chats)  # the buckets of the accounts active lately...
    now[0] += app.settings.flood_window.total_seconds()
    await TelegramChat(tg, channel, 5300).say("/start")
    assert len(app.flood) == 1  # ...and only those


async def test_a_burst_waits_with_telegram_not_in_memory(started, tg):
    """400 residents write at once: long polling takes updates from Telegram only as fast as they
    are handled, so at most about 2 x BACKLOG are in memory (confirmed to Telegram, not yet handled),
    and every one is answered."""
    app, channel = await started()
    pushed = [tg.push_text(chat_id, "/start")["update_id"] for chat_id in range(5401, 5801)]
    first, ahead = pushed[0], []
    while not set(pushed) <= set(channel.completed):
        offsets = [c.params.get("offset") or 0 for c in tg.calls_of("getUpdates")]
        confirmed = max([first, *offsets]) - first  # getUpdates(offset=n) confirms every update before n
        ahead.append(confirmed - sum(1 for u in channel.completed if u >= first))
        await asyncio.sleep(0.02)
        assert len(ahead) < 3000, "the burst was not handled in 60 s"
    assert all(tg.delivered_texts(chat_id) for chat_id in range(5401, 5801))
    assert max(ahead) <= 2 * BACKLOG, max(ahead)


async def test_sender_initialises_a_bot_that_was_not_started(tg):
    bot = Bot(tg.token, base_url=f"{tg.root}/bot", base_file_url=f"{tg.root}/file/bot")
    try:
        assert await TelegramSender(bot).send("42", Outbound(text="Merhaba"))  # katilim worker sends so
        assert tg.calls_of("getMe") and tg.delivered_texts(42) == ["Merhaba"]
    finally:
        await bot.shutdown()


async def test_command_menu_per_language(started, tg):
    app, _ = await started()
    calls = tg.calls_of("setMyCommands")
    by_lang = {c.params.get("language_code"): c.params for c in calls}
    assert set(by_lang) == {None, "tr", "en", "ar"}
    for lang, params in by_lang.items():
        assert params["scope"] == {"type": "default"}
        names = [c["command"] for c in params["commands"]]
        assert names[:6] == BASE_MENU[lang or "tr"]  # features append theirs after these
        assert names == [name for name, _ in command_menu(app.registry, lang or "tr")]
        assert all(c["description"] for c in params["commands"])
        descriptions = dict((c["command"], c["description"]) for c in params["commands"])
        assert descriptions[BASE_MENU[lang or "tr"][-1]] == t_in(lang or "tr", "command.deletedata")
    # a command a feature adds to the menu without a description key is left out, not sent empty
    router = Router("test")
    router.command("nodescription", "nodescription", menu={"en": "nodescription"})(lambda ctx, text: Stay())
    registry = build_registry(FEATURES + (Feature("test", routers=(router,)),))
    assert "nodescription" in registry.command_menu["en"]
    assert "nodescription" not in dict(command_menu(registry, "en"))


async def test_media_download_capped_and_stored_only_through_the_app(started, tg):
    """The channel hands over a file's bytes as Telegram has them, capped at MEDIA_MAX_BYTES (on
    the update's size, getFile's size and what arrives); it stores nothing itself: App.handle
    judges, cleans and stores (tests/test_media.py)."""
    app, channel = await started(media_max_bytes=4096)
    photo = plain_jpeg()
    update = Update.de_json(tg.push_photo(5009, photo), channel.application.bot)
    media = to_inbound(update).media[0]
    assert await app.media_fetchers["telegram"](media) == photo
    assert await channel.download(media) == photo

    voice = Update.de_json(tg.push_voice(5009, b"OggS" + b"\x01" * 100), channel.application.bot)
    assert await channel.download(to_inbound(voice).media[0]) == b"OggS" + b"\x01" * 100

    big = Update.de_json(tg.push_document(5009, b"x" * 5000, "plan.pdf"), channel.application.bot)
    with pytest.raises(MediaTooLarge):
        await channel.download(to_inbound(big).media[0])
    big_media = to_inbound(big).media[0]
    big_media.size = None  # the size is checked again on what getFile reports and what arrives
    with pytest.raises(MediaTooLarge):
        await channel.download(big_media)
    assert not app.settings.media_dir.exists() or not any(app.settings.media_dir.iterdir())


# ---------------------------------------------------------------- webhook mode
async def test_webhook_mode_checks_the_secret(started, tg):
    from bot.http import serve_http

    url = "https://katilim.example.org/telegram/webhook"
    app, channel = await started(telegram_webhook_url=url)
    secret = webhook_secret(app.settings)
    assert secret == hashlib.sha256(f"katilim-webhook:{tg.token}".encode()).hexdigest()
    hook = tg.calls_of("setWebhook")[-1]
    assert hook.params["url"] == url and hook.params["secret_token"] == secret
    assert not tg.calls_of("getUpdates")
    server = await serve_http(app)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            forged = tg.push_text(7001, "/start")
            for headers in ({}, {"X-Telegram-Bot-Api-Secret-Token": "forged"},
                            {"X-Telegram-Bot-Api-Secret-Token": secret[:-1]}):
                response = await client.post("/telegram/webhook", json=forged, headers=headers)
                assert response.status_code == 403
            assert resident_of(app, 7001) is None and not tg.sent_messages(7001)
            with Session(app.db) as db:
                assert not db.exec(select(ProcessedInbound)).all()

            signed = {"X-Telegram-Bot-Api-Secret-Token": secret}
            update = tg.push_text(7002, "/start", language_code="en")
            response = await client.post("/telegram/webhook", json=update, headers=signed)
            assert response.status_code == 200
            assert tg.delivered_texts(7002)[0].splitlines()[0] == t_in("en", "onboarding.choose_language")
            again = await client.post("/telegram/webhook", json=update, headers=signed)  # re-delivered
            assert again.status_code == 200 and len(tg.sent_messages(7002)) == 1
            tap = tg.push_callback(7002, "lang:en")
            assert (await client.post("/telegram/webhook", json=tap, headers=signed)).status_code == 200
            assert resident_of(app, 7002).locale == "en"
            assert any(c.method == "editMessageText" for c in tg.sent_messages(7002))
    finally:
        server.should_exit = True
        await server.wait_closed()


async def test_webhook_with_configured_secret(started, tg):
    from bot.http import create_http_app

    app, channel = await started(telegram_webhook_url="https://x.example.org/telegram/webhook",
                                 telegram_webhook_secret="s3cret-Value_1")
    http_app = create_http_app(app)
    transport = httpx.ASGITransport(app=http_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        update = tg.push_text(7003, "/start")
        derived = webhook_secret(app.settings.model_copy(update={"telegram_webhook_secret": ""}))
        bad = await client.post("/telegram/webhook", json=update,
                                headers={"X-Telegram-Bot-Api-Secret-Token": derived})
        assert bad.status_code == 403
        ok = await client.post("/telegram/webhook", json=update,
                               headers={"X-Telegram-Bot-Api-Secret-Token": "s3cret-Value_1"})
        assert ok.status_code == 200 and tg.delivered_texts(7003)


# ---------------------------------------------------------------- the sender
@pytest.fixture
async def sender(tg):
    bot = Bot(tg.token, base_url=f"{tg.root}/bot", base_file_url=f"{tg.root}/file/bot",
              request=HTTPXRequest(read_timeout=1.0, connect_timeout=5))
    async with bot:
        yield TelegramSender(bot)


async def test_sender_splits_long_text_keyboard_on_last(sender, tg):
    words = [f"kelime{i % 97}" for i in range(1000)]  # about 8,800 characters
    text = " ".join(words)
    out = Outbound(text=text, choices=[Choice("yes", "Evet"), Choice("no", "Hayır")], columns=2)
    message_id = await sender.send("42", out)
    calls = tg.calls_of("sendMessage")
    assert len(calls) == 3 and all(c.ok for c in calls)
    assert all(utf16_len(c.text) <= 4096 for c in calls)
    assert " ".join(c.text for c in calls).split() == words
    assert [bool(c.params.get("reply_markup")) for c in calls] == [False, False, True]
    assert keyboard(calls[-1]) == [[("Evet", "yes"), ("Hayır", "no")]]
    assert message_id == str(calls[-1].response["result"]["message_id"])


async def test_sender_long_labels_stay_readable(sender, tg):
    long_label = "Gürültü, yüksek sesli müzik ve gece geç saatte yapılan inşaat çalışmaları"
    out = Outbound(text="Hangisi?", choices=[Choice("a", "Su"), Choice("b", "Yol"),
                                             Choice("c", "Çöp toplama ve konteynerler"), Choice("d", long_label)],
                   columns=2)
    await sender.send("42", out)
    call = tg.calls_of("sendMessage")[-1]
    rows = keyboard(call)
    assert rows[0] == [("Su", "a"), ("Yol", "b")]
    assert rows[1] == [("Çöp toplama ve konteynerler", "c")]
    assert rows[2][0][1] == "d" and rows[2][0][0].startswith("4. ") and len(rows[2][0][0]) <= 40
    assert f"4. {long_label}" in call.text


async def test_long_choice_keys_are_sent_as_numbers(sender, tg):
    key = "event:" + "x" * 70  # over Telegram's 64-byte callback_data
    await sender.send("42", Outbound(text="?", choices=[Choice("a", "A"), Choice(key, "Uzun")]))
    assert keyboard(tg.calls_of("sendMessage")[-1]) == [[("A", "a")], [("Uzun", "#2")]]
    tapped = to_inbound(Update.de_json(tg.push_callback(42, "#2"), sender.bot))
    assert (tapped.kind, tapped.text) == (Kind.TEXT, "2")  # resolved by the engine like a typed number


async def test_sender_photo_document_and_places(sender, tg, tmp_path):
    photo = tmp_path / "foto.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0jpeg")
    caption = "Çukur " * 300  # 1,800 characters: more than a caption holds
    await sender.send("42", Outbound(text=caption, photo_path=str(photo), choices=[Choice("ok", "Tamam")]))
    sent_photo = tg.calls_of("sendPhoto")[-1]
    assert sent_photo.ok and sent_photo.params["photo"]["content"] == photo.read_bytes()
    assert utf16_len(sent_photo.text) <= 1024 and "reply_markup" not in sent_photo.params
    follow = tg.calls_of("sendMessage")[-1]
    assert (sent_photo.text + " " + follow.text).split() == caption.split()
    assert keyboard(follow) == [[("Tamam", "ok")]]

    export = json.dumps({"mahalle": "kozagac"})
    await sender.send("42", Outbound(text="Verileriniz", document=Attachment("veri.json", "application/json", export)))
    doc = tg.calls_of("sendDocument")[-1]
    assert doc.params["caption"] == "Verileriniz" and doc.params["document"]["filename"] == "veri.json"
    assert json.loads(doc.params["document"]["content"]) == {"mahalle": "kozagac"}
    before = len(tg.calls_of("sendMessage"))
    await sender.send("42", Outbound(text="uzun " * 400, document=Attachment("a.ics", "text/calendar", "BEGIN")))
    assert len(tg.calls_of("sendMessage")) == before + 1 and "caption" not in tg.calls_of("sendDocument")[-1].params
    path_doc = tmp_path / "rapor.pdf"
    path_doc.write_bytes(b"%PDF-1.4")
    await sender.send("42", Outbound(document=Attachment("rapor.pdf", "application/pdf", "", path=str(path_doc))))
    assert tg.calls_of("sendDocument")[-1].params["document"]["content"] == b"%PDF-1.4"

    await sender.send("42", Outbound(text="Toplanma yeri", latitude=38.39, longitude=27.17, venue_title="Park"))
    venue = tg.calls_of("sendVenue")[-1]
    assert venue.ok and venue.params["title"] == "Park" and venue.params["latitude"] == 38.39
    assert tg.calls_of("sendMessage")[-1].text == "Toplanma yeri"
    await sender.send("42", Outbound(latitude=38.4, longitude=27.2))
    assert tg.calls_of("sendLocation")[-1].params["longitude"] == 27.2
    with pytest.raises(SendError) as err:
        await sender.send("42", Outbound(text="x", photo_path=str(tmp_path / "gone.jpg")))
    assert err.value.failure is SendFailure.PERMANENT


async def test_sender_maps_errors(sender, tg):
    out = Outbound(text="Merhaba")
    tg.block_chat(77)
    with pytest.raises(SendError) as err:
        await sender.send("77", out)
    assert err.value.failure is SendFailure.UNREACHABLE

    tg.fail_next(1, 400, "Bad Request: chat not found")
    with pytest.raises(SendError) as err:
        await sender.send("42", out)
    assert err.value.failure is SendFailure.PERMANENT and "chat not found" in err.value.reason.lower()

    tg.fail_next(1, 400, "Bad Request: message is not modified: specified new message content ...")
    assert await sender.send("42", out) == ""  # counts as success

    for status in (500, 502, 503):
        tg.fail_next(1, status)
        with pytest.raises(SendError) as err:
            await sender.send("42", out)
        assert err.value.failure is SendFailure.RETRYABLE, status

    tg.delay_next(1, 5.0)  # longer than the 1 s read timeout
    with pytest.raises(SendError) as err:
        await sender.send("42", out)
    assert err.value.failure is SendFailure.RETRYABLE
    assert await sender.send("42", out)  # and the next one goes through


async def test_sender_contact_request_keyboard(sender, tg):
    await sender.send("42", Outbound(text="Numaranızı paylaşır mısınız?", request_contact="📱 Paylaş"))
    markup = tg.calls_of("sendMessage")[-1].params["reply_markup"]
    assert markup["keyboard"] == [[{"text": "📱 Paylaş", "request_contact": True}]]
    assert markup["one_time_keyboard"] is True
    await sender.send("42", Outbound(text="Numara?", request_contact="📱 Paylaş", choices=[Choice("no", "Vazgeç")]))
    markup = tg.calls_of("sendMessage")[-1].params["reply_markup"]
    assert markup["keyboard"][1] == [{"text": "Vazgeç"}]  # typing the label resolves to the choice
    await sender.send("42", Outbound(text="Tamam", remove_keyboard=True))
    assert tg.calls_of("sendMessage")[-1].params["reply_markup"] == {"remove_keyboard": True}


@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")  # PTB's own RetryAfter()
async def test_sender_rate_limited():
    with FakeTelegramServer(rate_limit_per_second=1, retry_after=3) as tg:
        async with Bot(tg.token, base_url=f"{tg.root}/bot", base_file_url=f"{tg.root}/file/bot") as bot:
            sender = TelegramSender(bot)
            with pytest.raises(SendError) as err:
                for n in range(5):  # more than one a second
                    await sender.send("42", Outbound(text=f"mesaj {n}"))
    assert err.value.failure is SendFailure.RATE_LIMITED and err.value.retry_after == 3.0
    assert tg.count_429 == 1


# ---------------------------------------------------------------- pure helpers
def test_split_text_boundaries():
    assert split_message("", 10) == []
    assert split_message("kısa", 10) == ["kısa"]
    assert split_message("bir iki üç dört", 8) == ["bir iki", "üç dört"]
    assert split_message("paragraf bir\n\nikinci paragraf", 20) == ["paragraf bir", "ikinci paragraf"]
    assert split_message("a" * 25, 10) == ["a" * 10, "a" * 10, "a" * 5]
    assert split_message("😀" * 6, 4) == ["😀😀", "😀😀", "😀😀"]  # UTF-16: an emoji counts twice


@hsettings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("abcçğı İŞ\n😀")), max_size=300), st.integers(min_value=2, max_value=50))
def test_split_text_properties(text, limit):
    pieces = split_message(text, limit)
    assert all(p and utf16_len(p) <= limit for p in pieces)
    assert "".join("".join(pieces).split()) == "".join(text.split())


def test_keyboard_rows():
    rows, lines = keyboard_rows([Choice(str(i), f"S{i}") for i in range(5)], 2)
    assert [[c.key for c in row] for row in rows] == [["0", "1"], ["2", "3"], ["4"]]
    assert lines == []
    rows, _ = keyboard_rows([Choice("a", "A"), Choice("b", "B")], 1)
    assert len(rows) == 2


async def test_update_conversion(tg):
    bot = Bot(tg.token, base_url=f"{tg.root}/bot")

    def conv(update: dict):
        return to_inbound(Update.de_json(update, bot))

    cmd = conv(tg.push_text(9, "/Start@katilim_test_bot ev_12", first_name="Zeynep", language_code="ar"))
    assert (cmd.kind, cmd.command, cmd.text, cmd.display_name, cmd.language_hint, cmd.address) == \
        (Kind.COMMAND, "start", "/start ev_12", "Zeynep", "ar", "9")
    assert cmd.external_id == str(tg.updates[-1]["update_id"]) and cmd.received_at is not None
    text = conv(tg.push_text(9, "Merhaba / selam"))
    assert (text.kind, text.text) == (Kind.TEXT, "Merhaba / selam")
    loc = conv(tg.push_location(9, 38.39, 27.17))
    assert (loc.kind, loc.latitude, loc.longitude) == (Kind.LOCATION, 38.39, 27.17)
    photo_update = tg.push_photo(9, b"jpeg", caption="çukur")
    photo = conv(photo_update)
    largest = photo_update["message"]["photo"][-1]
    assert (photo.kind, photo.text, photo.media[0].ref, photo.media[0].content_type, photo.media[0].size) == \
        (Kind.PHOTO, "çukur", largest["file_id"], "image/jpeg", 4)
    voice = conv(tg.push_voice(9, b"ogg"))
    assert voice.kind == Kind.VOICE and voice.media[0].content_type == "audio/ogg"
    image_doc = conv(tg.push_document(9, b"png", "foto.png", "image/png"))
    assert image_doc.kind == Kind.PHOTO and image_doc.media[0].content_type == "image/png"
    pdf = conv(tg.push_document(9, b"%PDF", "dilekce.pdf"))
    assert pdf.kind == Kind.DOCUMENT and pdf.media[0].filename == "dilekce.pdf"
    assert conv(tg.push_sticker(9)).kind == Kind.STICKER
    own = conv(tg.push_contact(9, "905321234567"))
    assert (own.kind, own.phone) == (Kind.CONTACT, "+905321234567")
    other = tg._user_message(9, contact={"phone_number": "+905551112233", "first_name": "X", "user_id": 99})
    assert conv(tg.push_update({"message": other})).kind == Kind.OTHER
    audio = tg._user_message(9, audio={"file_id": "A1", "file_unique_id": "UA1", "duration": 3,
                                       "mime_type": "audio/mpeg", "file_size": 10})
    assert conv(tg.push_update({"message": audio})).kind == Kind.VOICE
    video = tg._user_message(9, video={"file_id": "V1", "file_unique_id": "UV1", "width": 1, "height": 1,
                                       "duration": 1})
    assert conv(tg.push_update({"message": video})).kind == Kind.OTHER
    dice = tg._user_message(9, dice={"emoji": "🎲", "value": 3})
    assert conv(tg.push_update({"message": dice})).kind == Kind.OTHER
    tg._store_bot_message(9, {"text": "Soru", "reply_markup": {"inline_keyboard": [[{"text": "Evet",
                                                                                  "callback_data": "yes"}]]}})
    choice = conv(tg.push_callback(9, "yes"))
    assert (choice.kind, choice.choice, choice.address) == (Kind.CHOICE, "yes", "9")
    assert conv(tg.push_update({"edited_message": {**tg._user_message(9, text="x"), "edit_date": 1}})) is None
