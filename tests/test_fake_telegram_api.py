"""The fake Telegram Bot API server works with the real python-telegram-bot."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TimedOut
from telegram.ext import (
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest

from tests.fakes.telegram_api import FakeTelegramProcess, FakeTelegramServer

CHAT = 4242
# PTB itself reads RetryAfter.retry_after, which warns about the coming timedelta type
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*")


def make_bot(server: FakeTelegramServer, token: str | None = None, **request_kwargs) -> Bot:
    request = HTTPXRequest(**request_kwargs) if request_kwargs else None
    return Bot(token or server.token, base_url=f"{server.root}/bot",
               base_file_url=f"{server.root}/file/bot", request=request)


async def test_get_me_and_wrong_token(tg):
    async with make_bot(tg) as bot:
        me = await bot.get_me()
        assert me.username == "katilim_test_bot" and me.is_bot
    with pytest.raises(InvalidToken):
        async with make_bot(tg, token="999:WRONG") as bad:
            await bad.get_me()
    assert tg.calls_of("getMe")[-1].status == 401


async def test_send_message_with_inline_keyboard_and_edit(tg):
    markup = InlineKeyboardMarkup([[InlineKeyboardButton("Evet", callback_data="yes"),
                                    InlineKeyboardButton("Hayır", callback_data="no")]])
    async with make_bot(tg) as bot:
        first = await bot.send_message(CHAT, "Şikâyetiniz kaydedilsin mi?", reply_markup=markup)
        second = await bot.send_message(CHAT, "ikinci")
        assert second.message_id == first.message_id + 1
        assert first.reply_markup == markup
        assert first.chat.id == CHAT and first.from_user.username == "katilim_test_bot"
        edited = await bot.edit_message_text("Kaydedildi ✅", chat_id=CHAT, message_id=first.message_id)
        assert edited.text == "Kaydedildi ✅" and edited.reply_markup is None
        with pytest.raises(BadRequest, match="not modified"):
            await bot.edit_message_text("Kaydedildi ✅", chat_id=CHAT, message_id=first.message_id)
        await bot.send_chat_action(CHAT, "typing")
        await bot.send_location(CHAT, 41.01, 28.97)
        venue = await bot.send_venue(CHAT, 41.01, 28.97, "Belediye", "Meydan 1")
        assert venue.venue.title == "Belediye"
    call = tg.sent_messages(CHAT)[0]
    assert call.params["chat_id"] == CHAT
    assert call.params["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "yes"
    assert tg.delivered_texts(CHAT) == ["Şikâyetiniz kaydedilsin mi?", "ikinci", "Kaydedildi ✅"]
    assert tg.calls_of("editMessageText")[-1].status == 400


async def test_send_document_bytes_and_get_file_of_pushed_photo(tg):
    update = tg.push_photo(CHAT, b"\xff\xd8\xffJPEGDATA\r\n\x00", caption="çukur")
    async with make_bot(tg) as bot:
        message = await bot.send_document(CHAT, document=b"%PDF-1.4 rapor", filename="rapor.pdf",
                                          caption="Raporunuz")
        assert message.document.file_name == "rapor.pdf"
        assert message.caption == "Raporunuz"
        photo_id = update["message"]["photo"][-1]["file_id"]
        file = await bot.get_file(photo_id)
        assert file.file_size == len(b"\xff\xd8\xffJPEGDATA\r\n\x00")
        assert bytes(await file.download_as_bytearray()) == b"\xff\xd8\xffJPEGDATA\r\n\x00"
        sent = await bot.get_file(message.document.file_id)  # sent files are downloadable too
        assert bytes(await sent.download_as_bytearray()) == b"%PDF-1.4 rapor"
    upload = tg.calls_of("sendDocument")[0].params["document"]
    assert upload["filename"] == "rapor.pdf" and upload["content"] == b"%PDF-1.4 rapor"


async def test_rate_limit_raises_retry_after():
    with FakeTelegramServer(rate_limit_per_second=3) as tg:
        async with make_bot(tg) as bot:
            for i in range(3):
                await bot.send_message(CHAT + i, f"m{i}")
            with pytest.raises(RetryAfter):
                await bot.send_message(CHAT, "too many")
            assert tg.count_429 == 1
            assert tg.calls_of("sendMessage")[-1].status == 429
            await asyncio.sleep(1.05)  # the sliding window has moved on
            await bot.send_message(CHAT, "again")
    assert len(tg.delivered) == 4


async def test_server_in_a_process_of_its_own():
    """FakeTelegramProcess: the same server in a child process, its record fetched over HTTP."""
    with FakeTelegramProcess(rate_limit_per_second=3) as tg:
        async with make_bot(tg) as bot:
            before = time.monotonic()
            for i in range(3):
                await bot.send_message(CHAT + i, f"m{i}")
            with pytest.raises(RetryAfter):
                await bot.send_message(CHAT, "too many")
        seen = tg.record()
        proc = tg._proc
    assert seen["count_429"] == 1
    assert [chat for chat, _ in seen["delivered"]] == [CHAT, CHAT + 1, CHAT + 2]
    assert all(before <= t <= time.monotonic() for _, t in seen["delivered"])  # the machine's monotonic clock
    assert proc.returncode == 0  # stopped when its stdin closed


async def test_per_chat_limit():
    with FakeTelegramServer(per_chat_limit_per_second=1) as tg:
        async with make_bot(tg) as bot:
            await bot.send_message(1, "a")
            await bot.send_message(2, "b")  # other chats are not limited
            with pytest.raises(RetryAfter):
                await bot.send_message(1, "c")
    assert tg.count_429 == 1


async def test_faults(tg):
    tg.block_chat(CHAT)
    tg.fail_next(1, status=502)
    async with make_bot(tg, read_timeout=0.3) as bot:
        with pytest.raises(NetworkError):  # 502 Bad Gateway
            await bot.send_message(1, "x")
        with pytest.raises(Forbidden, match="blocked"):
            await bot.send_message(CHAT, "x")
        tg.delay_next(1, 0.8)
        with pytest.raises(TimedOut):
            await bot.send_message(1, "slow")
        tg.drop_next(1)
        started = time.monotonic()
        with pytest.raises(NetworkError):
            await bot.send_message(1, "dropped")
        assert time.monotonic() - started < 0.5
        tg.reset_faults()
        await bot.send_message(CHAT, "ok now")
    assert tg.delivered_texts(CHAT) == ["ok now"]
    # the delayed call is still processed (and delivered) after the client gave up
    tg.wait_for(lambda s: s.sent_messages()[2].status == 200, timeout=3)
    assert [c.status for c in tg.sent_messages()] == [502, 403, 200, 0, 200]
    assert tg.delivered_texts(1) == ["slow"]


async def test_long_polling_honours_timeout_and_offset(tg):
    async with httpx.AsyncClient(base_url=f"{tg.root}/bot{tg.token}") as client:
        started = time.monotonic()
        r = await client.post("/getUpdates", data={"timeout": "0.3"})
        assert r.json() == {"ok": True, "result": []} and time.monotonic() - started >= 0.25
        asyncio.get_running_loop().call_later(0.1, tg.push_text, CHAT, "/start")
        r = await client.post("/getUpdates", data={"timeout": "5"})
        (update,) = r.json()["result"]
        assert update["message"]["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
        r = await client.post("/getUpdates", data={"offset": str(update["update_id"] + 1)})
        assert r.json()["result"] == []
        r = await client.post("/getMessageReactions")
        assert r.status_code == 404 and r.json()["error_code"] == 404


async def test_application_polling_roundtrip(tg):
    app = (ApplicationBuilder().token(tg.token).base_url(f"{tg.root}/bot")
           .base_file_url(f"{tg.root}/file/bot").build())

    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Devam", callback_data="go")]])
        await update.message.reply_text(f"Merhaba {update.effective_user.first_name}!",
                                        reply_markup=keyboard)

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.message.reply_text(f"yankı: {update.message.text}")

    async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        await update.callback_query.answer()
        await update.callback_query.edit_message_text(f"seçildi: {update.callback_query.data}")

    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    app.add_handler(CallbackQueryHandler(on_button))
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=1)
    try:
        tg.push_text(CHAT, "/start", first_name="Mehmet")
        await tg.async_wait_for(lambda s: "Merhaba Mehmet!" in s.delivered_texts(CHAT), timeout=5)
        tg.push_text(CHAT, "merhaba")
        await tg.async_wait_for(lambda s: "yankı: merhaba" in s.delivered_texts(CHAT), timeout=5)
        start_message_id = tg.sent_messages(CHAT)[0].response["result"]["message_id"]
        tg.push_callback(CHAT, "go", message_id=start_message_id)
        await tg.async_wait_for(lambda s: "seçildi: go" in s.delivered_texts(CHAT), timeout=5)
        assert tg.calls_of("answerCallbackQuery")
        edit = tg.calls_of("editMessageText")[-1]
        assert edit.params["message_id"] == start_message_id
        assert tg.last_bot_message(CHAT)["text"] == "yankı: merhaba"
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


def test_wait_for_timeout_dumps_calls(tg):
    tg.push_text(1, "hi")
    with pytest.raises(AssertionError, match="pending updates: 1"):
        tg.wait_for(lambda s: s.delivered, timeout=0.1)
