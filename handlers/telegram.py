"""The Telegram channel: python-telegram-bot's Application, long polling or a webhook.

Every update becomes an `Inbound` (conversations/messages.py) and goes to `App.handle`, which runs
the step in one database transaction and sends the replies through `TelegramSender`. Our state is
in the database, so the Application has no persistence; the outbox paces sending, so it has no
rate limiter (its Bot's requests wait for the outbox's guard on the wire: `GatedRequest`).
`external_id` is the update id: a re-delivered update is ignored by the engine.

    TELEGRAM_BOT_TOKEN      set: the channel is on
    TELEGRAM_API_URL        the Bot API root (a self-hosted server, or tests' fake server)
    TELEGRAM_WEBHOOK_URL    set: webhook mode (POST /telegram/webhook); empty: long polling
    TELEGRAM_WEBHOOK_SECRET checked against X-Telegram-Bot-Api-Secret-Token (empty: derived from the token)

A webhook call with a wrong secret gets 403, a body over MAX_WEBHOOK_BYTES 413; neither writes anything.
Long polling keeps at most BACKLOG updates in memory ahead of handling (`_UpdateQueue`), and nothing
stays in memory per chat once it is quiet (`_Application`, the chat locks, bot/flood.py).
"""
from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import mimetypes
import re
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

import httpx
from fastapi import Request, Response
from telegram import (
    BotCommand,
    BotCommandScopeDefault,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    KeyboardButton,
    LinkPreviewOptions,
    Message,
    ReplyKeyboardMarkup,
    ReplyKeyboardRemove,
    Update,
)
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError, TimedOut
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler
from telegram.request import HTTPXRequest

from conversations.messages import Choice, Inbound, Kind, Media, Outbound
from handlers import kit
from handlers.delivery import ChannelLimits, SendError, SendFailure, send_gate
from handlers.kit import AddressLocks, ChannelSetupError, parse_command, split_text, utf16_len
from storage import media as media_store
from storage.media import MediaTooLarge

log = logging.getLogger(__name__)

CHANNEL = "telegram"
WEBHOOK_PATH = "/telegram/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "callback_query"]
TEXT_LIMIT = 4096          # sendMessage text, in UTF-16 code units
CAPTION_LIMIT = 1024       # sendPhoto / sendDocument caption
POLL_TIMEOUT = 10          # seconds a getUpdates long poll waits
ROW_WIDTH = 32             # characters a full-width inline button shows comfortably on a phone
LONG_LABEL = 40            # longer labels are spelled out in the message text
CALLBACK_LIMIT = 64        # bytes of callback_data
NUMBERED = "#"             # callback_data "#3": the choice numbered 3 (its key was too long)
CONCURRENT_UPDATES = 64    # different chats are handled concurrently; one chat's updates in order
BACKLOG = 2 * CONCURRENT_UPDATES  # polled updates in memory at most (queued, and taken but not handled)
MAX_WEBHOOK_BYTES = 256 * 1024  # an update is a few KB (text up to 4096 characters); larger: 413


# ---------------------------------------------------------------- pure helpers
def split_message(text: str, limit: int = TEXT_LIMIT) -> list[str]:
    """A text in messages Telegram accepts (its limits count UTF-16 code units)."""
    return split_text(text, limit, utf16_len)


def callback_data(key: str, number: int) -> str:
    """The choice key; a key over Telegram's 64 bytes becomes "#<number>", answered as the typed
    number, which the engine resolves to the choice like any numbered answer."""
    return key if len(key.encode("utf-8")) <= CALLBACK_LIMIT else f"{NUMBERED}{number}"


def keyboard_rows(choices: list[Choice], columns: int = 1) -> tuple[list[list[Choice]], list[str]]:
    """Choices laid out `columns` to a row; a label too long for its column gets a row of its own,
    and a label too long even for that is spelled out (numbered) in lines for the message text,
    the button showing its number and its start."""
    columns = max(1, columns)
    rows: list[list[Choice]] = []
    lines: list[str] = []
    row: list[Choice] = []
    for number, choice in enumerate(choices, 1):
        label = choice.label
        if len(label) > LONG_LABEL:
            lines.append(f"{number}. {label}")
            label = f"{number}. {label[:LONG_LABEL - 6].rstrip()}…"
            choice = Choice(choice.key, label)
        if columns > 1 and len(label) > ROW_WIDTH // columns:
            if row:
                rows.append(row)
                row = []
            rows.append([choice])
            continue
        row.append(choice)
        if len(row) == columns:
            rows.append(row)
            row = []
    if row:
        rows.append(row)
    return rows, lines


def send_error(exc: Exception) -> SendError | None:
    """A Telegram error in the dispatcher's terms (handlers.delivery.SendFailure); None when it means
    success: 429 → RATE_LIMITED (with Telegram's retry_after), 403 → UNREACHABLE, 400 →
    PERMANENT, timeouts, network errors and 5xx → RETRYABLE."""
    if isinstance(exc, RetryAfter):
        return SendError(SendFailure.RATE_LIMITED, str(exc), _retry_after_seconds(exc))
    if isinstance(exc, Forbidden):
        return SendError(SendFailure.UNREACHABLE, exc.message)
    if isinstance(exc, BadRequest):
        if "message is not modified" in exc.message.lower():
            return None
        return SendError(SendFailure.PERMANENT, exc.message)
    if isinstance(exc, (TimedOut, NetworkError)):
        return SendError(SendFailure.RETRYABLE, getattr(exc, "message", "") or type(exc).__name__)
    return SendError(SendFailure.RETRYABLE, f"{type(exc).__name__}: {exc}")


def _retry_after_seconds(exc: RetryAfter) -> float:
    value = getattr(exc, "_retry_after", None)
    if isinstance(value, timedelta):
        return value.total_seconds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _phone(number: str) -> str:
    digits = re.sub(r"[^\d+]", "", number or "")
    return digits if digits.startswith("+") or not digits else "+" + digits


def to_inbound(update: Update) -> Inbound | None:
    """An update as an Inbound, or None for what we do not serve (groups, edits, other updates)."""
    query = update.callback_query
    message = update.message
    if query is not None:
        user = query.from_user
        chat = query.message.chat if query.message is not None else None
    elif message is not None:
        user = message.from_user
        chat = message.chat
    else:
        return None  # edited messages, channel posts, chat member updates...
    if user is None or user.is_bot:
        return None
    if chat is not None and chat.type != "private":
        log.info("ignoring a message from a %s chat (only private chats are served)", chat.type)
        return None
    base: dict[str, Any] = dict(channel=CHANNEL, address=str(chat.id if chat is not None else user.id),
                                display_name=(user.first_name or "")[:128], language_hint=user.language_code or "",
                                external_id=str(update.update_id))
    if query is not None:
        data = query.data or ""
        if re.fullmatch(re.escape(NUMBERED) + r"\d{1,3}", data):
            return Inbound(kind=Kind.TEXT, text=data[len(NUMBERED):], **base)
        return Inbound(kind=Kind.CHOICE, choice=data, **base)
    base["received_at"] = message.date
    text = message.text
    if text is not None:
        command = parse_command(text)
        if command is not None:
            return Inbound(kind=Kind.COMMAND, command=command.name, text=command.text, **base)
        return Inbound(kind=Kind.TEXT, text=text, **base)
    caption = message.caption or ""
    if message.location is not None:
        return Inbound(kind=Kind.LOCATION, latitude=message.location.latitude,
                       longitude=message.location.longitude, text=message.venue.title if message.venue else "",
                       **base)
    if message.photo:
        size = max(message.photo, key=lambda p: (p.file_size or 0, p.width * p.height))
        return Inbound(kind=Kind.PHOTO, text=caption, media=[Media(size.file_id, "image/jpeg", size.file_size)], **base)
    if message.voice is not None:
        voice = message.voice
        return Inbound(kind=Kind.VOICE, text=caption, media=[Media(voice.file_id, voice.mime_type or "audio/ogg",
                                                                   voice.file_size)], **base)
    if message.audio is not None:
        audio = message.audio
        return Inbound(kind=Kind.VOICE, text=caption, media=[Media(audio.file_id, audio.mime_type or "audio/mpeg",
                                                                   audio.file_size, audio.file_name or "")], **base)
    if message.document is not None and message.animation is None:
        doc = message.document
        content_type = doc.mime_type or mimetypes.guess_type(doc.file_name or "")[0] or "application/octet-stream"
        kind = Kind.PHOTO if content_type.startswith("image/") else Kind.DOCUMENT
        return Inbound(kind=kind, text=caption, media=[Media(doc.file_id, content_type, doc.file_size,
                                                             doc.file_name or "")], **base)
    if message.sticker is not None:
        return Inbound(kind=Kind.STICKER, **base)
    if message.contact is not None:
        contact = message.contact
        if contact.user_id is not None and contact.user_id == user.id:
            return Inbound(kind=Kind.CONTACT, phone=_phone(contact.phone_number), **base)
        return Inbound(kind=Kind.OTHER, **base)
    return Inbound(kind=Kind.OTHER, text=caption, **base)  # video, poll, dice, animation, game...


def button_label(message: Message | None, data: str) -> str | None:
    markup = message.reply_markup if message is not None else None
    for row in (markup.inline_keyboard if markup else ()):
        for button in row:
            if button.callback_data == data:
                return button.text
    return None


def webhook_secret(settings) -> str:
    """TELEGRAM_WEBHOOK_SECRET, or a stable secret derived from the token (A-Z a-z 0-9 _ - only)."""
    if settings.telegram_webhook_secret:
        return settings.telegram_webhook_secret
    return hashlib.sha256(f"katilim-webhook:{settings.telegram_bot_token}".encode()).hexdigest()


def command_menu(registry, lang: str) -> list[tuple[str, str]]:
    """(name, description) of the commands shown in Telegram's menu for a language: the
    registry's command menu (conversations/registry.py), those with a description."""
    from conversations.i18n import translator

    t = translator(lang)
    result, seen = [], set()
    for name in registry.command_menu.get(lang, ()):
        key = registry.description(name)
        if not key or not t.has(key) or name in seen or not re.fullmatch(r"[a-z0-9_]{1,32}", name):
            continue
        seen.add(name)
        result.append((name, t(key)[:256]))
    return result


# ---------------------------------------------------------------- sending
async def _gate_on_wire(request: httpx.Request) -> None:
    """httpx request hook: during a paced send, the request waits for the dispatcher's guard on send
    starts (handlers.delivery.send_gate) right before its body goes out, past PTB, the connection pool
    and the headers (the server counts a request when its body is in)."""
    gate = send_gate.get()
    if gate is None:
        return

    async def trace(event: str, info: dict) -> None:  # httpcore's trace extension
        if event.endswith(".send_request_body.started"):
            await gate()

    request.extensions["trace"] = trace


class GatedRequest(HTTPXRequest):
    """PTB's HTTPX request with `_gate_on_wire`: the channel's Bot sends through it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(httpx_kwargs={"event_hooks": {"request": [_gate_on_wire]}}, **kwargs)


class TelegramSender:
    """Renders an Outbound as Telegram messages (handlers.delivery.Sender)."""

    channel = CHANNEL

    def __init__(self, bot) -> None:
        self.bot = bot
        self.gates_on_wire = isinstance(getattr(bot, "request", None), GatedRequest)
        self._init_lock = asyncio.Lock()
        self._ready_done = False

    def limits(self, settings) -> ChannelLimits:
        """The Bot API's: TELEGRAM_MESSAGES_PER_SECOND (30) overall, TELEGRAM_PER_CHAT_PER_SECOND
        (1) per chat with a burst of TELEGRAM_PER_CHAT_BURST."""
        return ChannelLimits(per_second=settings.telegram_messages_per_second,
                             per_chat_per_second=settings.telegram_per_chat_per_second,
                             per_chat_burst=settings.telegram_per_chat_burst)

    async def warm_up(self) -> None:
        """The Bot initialises on its first call; done during a send, it would make that send late
        for its slot. Bot.initialize does nothing when the Bot is initialised already (by the
        Application), and initialises it again after a shutdown."""
        async with self._init_lock:
            await self.bot.initialize()
            self._ready_done = True

    async def close(self) -> None:
        """Shut down the Bot this sender initialised (a started channel's Application shuts its
        own down in TelegramChannel.stop)."""
        if self._ready_done:
            self._ready_done = False
            await self.bot.shutdown()

    async def _ready(self) -> None:
        """A sender used without its channel started (katilim worker) initialises the Bot itself
        (Bot.initialize does nothing when the Application already did it)."""
        if not self._ready_done:
            async with self._init_lock:
                if not self._ready_done:
                    await self.bot.initialize()
                    self._ready_done = True

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        try:
            await self._ready()
            return await self._send(address, out)
        except TelegramError as exc:
            error = send_error(exc)
            if error is None:
                return ""
            raise error from exc
        except OSError as exc:  # a file to send is gone
            raise SendError(SendFailure.PERMANENT, f"{type(exc).__name__}: {exc}") from exc

    async def _send(self, address: str, out: Outbound) -> str:
        chat = int(address) if re.fullmatch(r"-?\d+", address) else address
        rows, long_lines = keyboard_rows(out.choices, out.columns)
        text = "\n".join([out.text, "", *long_lines]) if long_lines and out.text else "\n".join([out.text, *long_lines])
        markup: Any = None
        inline_after = None
        if out.request_contact or out.request_location:
            # Telegram asks before sharing the resident's own number or position. A reply keyboard
            # cannot carry inline buttons: choices become buttons that type their label, which the
            # engine resolves to the choice like any typed label.
            button = (KeyboardButton(out.request_contact, request_contact=True) if out.request_contact
                      else KeyboardButton(out.request_location, request_location=True))
            markup = ReplyKeyboardMarkup([[button]] + [[KeyboardButton(c.label) for c in row] for row in rows],
                                         resize_keyboard=True, one_time_keyboard=True)
        elif rows and out.remove_keyboard and not (out.photo_path or out.document is not None):
            # The step that showed a reply keyboard is done, and this message has inline buttons: a
            # message carries one kind of markup, so it goes with ReplyKeyboardRemove and gets its
            # inline buttons by editMessageReplyMarkup (which takes inline keyboards only).
            markup = ReplyKeyboardRemove()
            inline_after = inline_markup(out.choices, rows)
        elif rows:
            markup = inline_markup(out.choices, rows)
        elif out.remove_keyboard:
            markup = ReplyKeyboardRemove()
        last = ""
        if out.photo_path:
            path = Path(out.photo_path)
            caption, overflow = _caption_split(text)
            photo = InputFile(path.read_bytes(), filename=path.name)
            sent = await self.bot.send_photo(chat, photo, caption=caption or None,
                                             reply_markup=None if overflow else markup)
            last = str(sent.message_id)
            return await self._texts(chat, overflow, markup) or last
        if out.document is not None:
            doc = out.document
            data = Path(doc.path).read_bytes() if doc.path else (doc.data or "").encode("utf-8")
            fits = utf16_len(text) <= CAPTION_LIMIT
            if not fits:
                await self._texts(chat, split_message(text), None)
            sent = await self.bot.send_document(chat, InputFile(data, filename=doc.filename),
                                                caption=(text or None) if fits else None, reply_markup=markup)
            return str(sent.message_id)
        if out.latitude is not None and out.longitude is not None:
            await self._texts(chat, split_message(text), None)
            if out.venue_title:
                sent = await self.bot.send_venue(chat, out.latitude, out.longitude, out.venue_title[:256],
                                                 f"{out.latitude:.5f}, {out.longitude:.5f}", reply_markup=markup)
            else:
                sent = await self.bot.send_location(chat, out.latitude, out.longitude, reply_markup=markup)
            return str(sent.message_id)
        last = await self._texts(chat, split_message(text), markup, preview=out.link_preview)
        if inline_after is not None:
            await self.bot.edit_message_reply_markup(chat, int(last), reply_markup=inline_after)
        return last

    async def _texts(self, chat, pieces: list[str], markup, *, preview: bool = True) -> str:
        last = ""
        options = None if preview else LinkPreviewOptions(is_disabled=True)
        for i, piece in enumerate(pieces):
            sent = await self.bot.send_message(chat, piece, reply_markup=markup if i == len(pieces) - 1 else None,
                                               link_preview_options=options)
            last = str(sent.message_id)
        return last


def inline_markup(choices, rows) -> InlineKeyboardMarkup:
    """Inline buttons for the rows of choices; each button's callback carries the choice's number."""
    numbers: dict[str, int] = {}
    for n, c in enumerate(choices, 1):
        numbers.setdefault(c.key, n)
    return InlineKeyboardMarkup([
        [InlineKeyboardButton(c.label, callback_data=callback_data(c.key, numbers[c.key])) for c in row]
        for row in rows])


def _caption_split(text: str) -> tuple[str, list[str]]:
    """A caption of at most CAPTION_LIMIT, and the rest of the text as following messages."""
    if utf16_len(text) <= CAPTION_LIMIT:
        return text, []
    first = split_message(text, CAPTION_LIMIT)[0]
    rest = text.strip()[len(first):]
    return first, split_message(rest)


# ---------------------------------------------------------------- the channel
class _Application(Application):
    """PTB's Application, less its persistence bookkeeping when there is no persistence (ours):
    PTB notes the chat and user id of every handled update for its next persistence run, which
    never comes without one, so those two sets would grow by every resident ever seen."""

    def _mark_for_persistence_update(self, *, update: object | None = None, job: Any = None) -> None:
        if self.persistence is not None:
            super()._mark_for_persistence_update(update=update, job=job)


class _UpdateQueue(asyncio.Queue):
    """PTB's update queue, with backpressure for long polling. PTB turns each update it takes from
    its queue into a task at once (the tasks then wait for one of CONCURRENT_UPDATES places), so a
    burst (thousands of residents answering a broadcast) sat in memory whole, and the allocator kept
    that peak. Here the queue gives out an update only while fewer than `backlog` are taken and not
    done (PTB calls task_done when one is handled), and holds `backlog` itself: when it is full,
    polling waits and the rest of the burst stays with Telegram, not yet confirmed there."""

    def __init__(self, backlog: int) -> None:
        super().__init__(maxsize=backlog)
        self._places = asyncio.Semaphore(backlog)
        self._taken = 0

    async def get(self) -> Any:
        await self._places.acquire()
        try:
            item = await super().get()
        except BaseException:
            self._places.release()
            raise
        self._taken += 1
        return item

    def task_done(self) -> None:
        super().task_done()
        if self._taken:  # not for what PTB drops with get_nowait() when it stops
            self._taken -= 1
            self._places.release()


class TelegramChannel:
    """The Telegram channel (bot.app.Channel)."""

    name = CHANNEL
    numbers_answer_proactive = False  # buttons say which message they answer (issue 14 may turn it on)

    def __init__(self, app) -> None:
        self.app = app
        settings = app.settings
        self.settings = settings
        root = settings.telegram_api_url.rstrip("/")
        self.application: Application = (
            ApplicationBuilder()
            .application_class(_Application)
            .token(settings.telegram_bot_token)
            .base_url(f"{root}/bot")
            .base_file_url(f"{root}/file/bot")
            .job_queue(None)
            .request(GatedRequest())
            .concurrent_updates(CONCURRENT_UPDATES)
            .update_queue(_UpdateQueue(BACKLOG))
            .build()
        )
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self.sender = TelegramSender(self.application.bot)
        self.webhook = bool(settings.telegram_webhook_url)
        self.secret = webhook_secret(settings) if self.webhook else ""
        self.completed: collections.deque[int] = collections.deque(maxlen=1000)  # recently handled update ids
        self._failed: set[int] = set()
        self._locks = AddressLocks()
        self._started = False
        self._inflight = 0                 # webhook updates being handled right now
        self._idle = asyncio.Event()
        self._idle.set()
        app.media_fetchers[self.name] = self.download

    # -- lifecycle
    async def start(self) -> None:
        try:
            await self.application.initialize()
        except InvalidToken:

            raise ChannelSetupError("Telegram refused TELEGRAM_BOT_TOKEN; check the token from @BotFather") from None
        await self.set_commands()
        await self.application.start()
        self._started = True
        if self.webhook:
            await self.application.bot.set_webhook(self.settings.telegram_webhook_url, secret_token=self.secret,
                                                   allowed_updates=ALLOWED_UPDATES)
            log.info("Telegram webhook mode: %s", self.settings.telegram_webhook_url)
        else:  # start_polling deletes any webhook first
            await self.application.updater.start_polling(timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES,
                                                         bootstrap_retries=3, error_callback=self._poll_error)
            log.info("Telegram long polling as @%s", self.application.bot.username)

    async def stop(self) -> None:
        application = self.application
        self._started = False  # webhook calls from now on get 503: Telegram sends them again later
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=15)
        except asyncio.TimeoutError:
            log.warning("stopping with %d Telegram webhook updates still being handled", self._inflight)
        try:
            if application.updater is not None and application.updater.running:
                await asyncio.wait_for(application.updater.stop(), timeout=15)
            if application.running:
                await asyncio.wait_for(application.stop(), timeout=15)
        finally:
            await asyncio.wait_for(application.shutdown(), timeout=15)

    async def set_commands(self) -> None:
        """The command menu per language (the default scope shows the Turkish one)."""
        bot = self.application.bot
        try:
            menus = {lang: [BotCommand(n, d) for n, d in command_menu(self.app.registry, lang)]
                     for lang in ("tr", "en", "ar")}
            await bot.set_my_commands(menus["tr"], scope=BotCommandScopeDefault())
            for lang, commands in menus.items():
                await bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=lang)
        except TelegramError as exc:
            log.warning("Telegram command menu not set: %s", exc)

    def _poll_error(self, exc: TelegramError) -> None:
        log.warning("Telegram polling: %s", exc)

    # -- webhook
    def mount(self, http_app) -> None:
        if not self.webhook:
            return

        async def telegram_webhook(request: Request) -> Response:
            given = request.headers.get(SECRET_HEADER, "")
            if not hmac.compare_digest(given.encode(), self.secret.encode()):
                log.warning("Telegram webhook call with a wrong or missing secret from %s",
                            request.client.host if request.client else "?")
                return Response(status_code=403)
            if not self._started:
                return Response(status_code=503)
            body = await kit.read_body(request, MAX_WEBHOOK_BYTES)
            if body is None:
                return Response(status_code=413)
            try:
                data = json.loads(body)
                update = Update.de_json(data, self.application.bot)
            except Exception:  # noqa: BLE001 - a malformed update, whatever breaks on it, is a 400
                return Response(status_code=400)
            if update is None:
                return Response(status_code=400)
            ok = await self.process(update)
            return Response(status_code=200 if ok else 500)

        http_app.add_api_route(WEBHOOK_PATH, telegram_webhook, methods=["POST"], include_in_schema=False)

    async def process(self, update: Update) -> bool:
        """Handle one update now (webhook); False when it failed and Telegram should send it again."""
        self._inflight += 1
        self._idle.clear()
        try:
            await self.application.process_update(update)
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        failed = update.update_id in self._failed
        self._failed.discard(update.update_id)
        return not failed

    # -- updates
    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        inbound = to_inbound(update)
        if inbound is None:
            self.completed.append(update.update_id)
            return
        # The chat's lock is taken before anything is awaited: its updates are handled in order.
        async with self._locks.hold(inbound.address):
            if update.callback_query is not None:
                await self._settle_callback(update)
            await kit.handle(self.app, inbound)  # the database unavailable: tried again for about a minute
        self.completed.append(update.update_id)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if isinstance(update, Update):
            if self.webhook:  # process() reads and forgets it; polling has no one to tell
                self._failed.add(update.update_id)
            log.error("Telegram update %s not handled", update.update_id, exc_info=context.error)
        else:
            log.error("Telegram error", exc_info=context.error)

    async def _settle_callback(self, update: Update) -> None:
        """Answer the tapped button and take the keyboard away, showing what was chosen."""
        query = update.callback_query
        bot = self.application.bot
        try:
            await query.answer()
        except TelegramError as exc:
            log.debug("callback not answered: %s", exc)
        message = query.message if isinstance(query.message, Message) else None
        label = button_label(message, query.data or "")
        if message is None or label is None:
            return
        try:
            new_text = f"{message.text}\n\n→ {label}" if message.text else ""
            if new_text and utf16_len(new_text) <= TEXT_LIMIT:
                await bot.edit_message_text(new_text, chat_id=message.chat.id, message_id=message.message_id,
                                            reply_markup=None)
            else:
                await bot.edit_message_reply_markup(chat_id=message.chat.id, message_id=message.message_id,
                                                    reply_markup=None)
        except TelegramError as exc:
            if send_error(exc) is not None:
                log.info("buttons of message %s not removed: %s", message.message_id, exc)

    # -- media
    async def download(self, media: Media) -> bytes:
        """A Telegram file's bytes (App._fetch_media judges, cleans and stores them); MediaTooLarge
        over MEDIA_MAX_BYTES, checked on the size the update gave, the size getFile reports and
        what arrives. Telegram failures raise SendError."""
        limit = self.settings.media_max_bytes
        media_store.check_size(media.size or None, limit)
        try:
            await self.sender._ready()
            tg_file = await self.application.bot.get_file(media.ref)
            media_store.check_size(tg_file.file_size or None, limit)
            data = bytes(await tg_file.download_as_bytearray())
        except TelegramError as exc:
            raise (send_error(exc) or SendError(SendFailure.RETRYABLE, str(exc))) from exc
        media_store.check_size(len(data), limit)
        return data


__all__: Iterable[str] = ["TelegramChannel", "TelegramSender", "MediaTooLarge", "split_message", "keyboard_rows",
                          "send_error", "to_inbound", "command_menu", "webhook_secret"]
