"""A fake Telegram Bot API server for tests.

``FakeTelegramServer`` runs a small Starlette app under uvicorn in a background
thread on 127.0.0.1 and answers enough of the Bot API for the *real*
python-telegram-bot ``Bot``/``Application`` (long polling included) to run
against it::

    with FakeTelegramServer() as tg:
        app = (ApplicationBuilder().token(tg.token)
               .base_url(f"{tg.root}/bot").base_file_url(f"{tg.root}/file/bot").build())
        ...
        tg.push_text(42, "/start")
        await tg.async_wait_for(lambda s: s.delivered_texts(42))

Every API call is recorded in ``server.calls`` (``Call`` objects); a text over
4096 UTF-16 code units (a caption over 1024) is refused with 400, as Telegram
does.  Faults (blocked chats, 5xx answers, delays, dropped connections) and
Telegram's flood limits (HTTP 429) can be switched on for outbox/retry tests.

``FakeTelegramProcess`` runs the same server in a process of its own
(``python -m tests.fakes.telegram_api --serve``), for measurements: a real Bot
API server is another machine, and arrival times taken inside the process under
test would carry that process's GIL, event loop and garbage collector pauses.
``record()`` fetches what it saw (sends delivered with their arrival times, 429s)
over HTTP::

    with FakeTelegramProcess(rate_limit_per_second=30) as tg:
        ...  # send through tg.root with tg.token
        seen = tg.record()   # {"delivered": [[chat_id, time], ...], "count_429": 0}

PTB sends its parameters form-encoded with every non-string value JSON-encoded
(multipart/form-data when files are uploaded); JSON bodies and query strings
are accepted as well.  Parameters are decoded back to Python values.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.request import urlopen

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.fakes.base import LocalServer

try:  # used to really drop connections (drop_next); optional
    from uvicorn.protocols.http.h11_impl import H11Protocol as _H11Protocol
except ImportError:  # pragma: no cover - other uvicorn layouts
    _H11Protocol = None

__all__ = ["Call", "FakeTelegramProcess", "FakeTelegramServer", "SEND_METHODS"]

#: Methods subject to rate limits and injected faults (the "outbox" methods).
SEND_METHODS = frozenset(
    {"sendMessage", "sendDocument", "sendPhoto", "sendLocation", "sendVenue", "editMessageText"}
)
#: Methods answering 403 for a blocked chat.
CHAT_METHODS = SEND_METHODS | {"sendChatAction", "editMessageReplyMarkup"}
#: Parameters that are plain strings (never JSON-decoded).
STRING_PARAMS = frozenset(
    {
        "text", "caption", "title", "address", "callback_query_id", "file_id", "url",
        "parse_mode", "secret_token", "phone_number", "first_name", "last_name",
        "foursquare_id", "foursquare_type", "google_place_id", "google_place_type",
        "action", "language_code", "inline_message_id", "ip_address", "message_effect_id",
        "business_connection_id", "vcard", "emoji",
    }
)
DROP_FALLBACK_SECONDS = 30.0  # used when the connection cannot be aborted
ERROR_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Call:
    """One recorded Bot API call."""

    method: str
    params: dict[str, Any]
    time: float  # time.monotonic() at arrival
    status: int = 0  # HTTP status answered (0 = dropped / not answered yet)
    response: Any = None  # the JSON body answered

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def chat_id(self) -> Any:
        return self.params.get("chat_id")

    @property
    def text(self) -> str | None:
        return self.params.get("text", self.params.get("caption"))

    def short(self) -> str:
        params = {k: (f"<{len(v['content'])} bytes {v.get('filename')!r}>"
                      if isinstance(v, dict) and "content" in v else v)
                  for k, v in self.params.items()}
        return f"{self.method} -> {self.status} {params}"


class _ApiError(Exception):
    def __init__(self, status: int, description: str | None = None, parameters: dict | None = None):
        super().__init__(description)
        self.status = status
        self.description = description or ERROR_DESCRIPTIONS.get(status, "Error")
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": self.status, "description": self.description}
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _same_chat(a: Any, b: Any) -> bool:
    return str(a) == str(b)


def _chat_key(chat_id: Any) -> Any:
    try:
        return int(chat_id)
    except (TypeError, ValueError):
        return chat_id


TEXT_LIMIT = 4096     # the Bot API's limits, in UTF-16 code units (an emoji counts two)
CAPTION_LIMIT = 1024


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _decode_value(key: str, value: Any) -> Any:
    if not isinstance(value, str) or key in STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _parse_multipart(body: bytes, content_type: str) -> dict[str, Any]:
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise _ApiError(400, "Bad Request: malformed multipart body")
    delimiter = b"--" + match.group(1).encode("latin-1")
    result: dict[str, Any] = {}
    for part in body.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.partition(b"\r\n\r\n")
        if content.endswith(b"\r\n"):
            content = content[:-2]
        headers = head.decode("utf-8", "replace")
        name = re.search(r'\bname="([^"]*)"', headers)
        if not name:
            continue
        filename = re.search(r'\bfilename="([^"]*)"', headers)
        if filename:
            ctype = re.search(r"(?im)^content-type:\s*(\S+)", headers)
            result[name.group(1)] = {
                "filename": filename.group(1),
                "content": content,
                "mime_type": ctype.group(1) if ctype else None,
            }
        else:
            result[name.group(1)] = content.decode("utf-8")
    return result


def _make_protocol(registry: dict[tuple, Any], lock: threading.Lock):
    """An h11 protocol that remembers transports by client address (for drop_next)."""
    if _H11Protocol is None:  # pragma: no cover
        return "h11"

    class _Protocol(_H11Protocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport):  # type: ignore[override]
            super().connection_made(transport)
            if self.client:
                with lock:
                    registry[tuple(self.client)] = transport

        def connection_lost(self, exc):
            if self.client:
                with lock:
                    registry.pop(tuple(self.client), None)
            super().connection_lost(exc)

    return _Protocol


class FakeTelegramServer(LocalServer):
    """A local, thread-safe fake of the Telegram Bot API (see module docstring)."""

    name = "fake-telegram"

    def __init__(
        self,
        token: str = "123:TEST",
        bot_username: str = "katilim_test_bot",
        rate_limit_per_second: float | None = None,
        per_chat_limit_per_second: float | None = None,
        retry_after: int = 1,
    ) -> None:
        super().__init__()
        self.token = token
        self.bot_username = bot_username
        self.rate_limit_per_second = rate_limit_per_second
        self.per_chat_limit_per_second = per_chat_limit_per_second
        self.retry_after = retry_after
        head = token.split(":", 1)[0]
        self.bot_user = {
            "id": int(head) if head.isdigit() else 123,
            "is_bot": True,
            "first_name": "Katılım Test",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self._lock = threading.RLock()
        # recording
        self.calls: list[Call] = []
        self.delivered: list[Call] = []
        self.count_429 = 0
        self.updates: list[dict[str, Any]] = []  # every pushed update
        # state
        self._pending: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._ids = itertools.count(1)
        self._message_ids: dict[Any, itertools.count] = {}
        self._messages: dict[tuple[Any, int], dict[str, Any]] = {}  # bot messages by (chat, id)
        self._last_bot_message: dict[Any, dict[str, Any]] = {}
        self._users: dict[Any, dict[str, Any]] = {}
        self._files: dict[str, dict[str, Any]] = {}
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.webhook_url = ""
        # limits and faults
        self._window: collections.deque[float] = collections.deque()
        self._chat_windows: dict[Any, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.blocked_chats: set[str] = set()
        self._fail: list[tuple[int, str | None]] = []
        self._delay: list[float] = []
        self._drop = 0
        # server
        self._transports: dict[tuple, Any] = {}
        self._transport_lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._stop_event: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"{self.root}/bot"

    @property
    def base_file_url(self) -> str:
        return f"{self.root}/file/bot"

    def _uvicorn_options(self) -> dict[str, Any]:
        return {"http": _make_protocol(self._transports, self._transport_lock)}

    async def _on_loop(self) -> None:
        self._wake = asyncio.Event()
        self._stop_event = asyncio.Event()

    def _before_stop(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_event.set)
                self._loop.call_soon_threadsafe(self._notify)
            except RuntimeError:  # loop already closed
                pass

    # ------------------------------------------------------------------ faults & limits
    def block_chat(self, chat_id: Any) -> None:
        with self._lock:
            self.blocked_chats.add(str(chat_id))

    def unblock_chat(self, chat_id: Any) -> None:
        with self._lock:
            self.blocked_chats.discard(str(chat_id))

    def fail_next(self, n: int, status: int = 500, description: str | None = None) -> None:
        """The next ``n`` send calls answer ``status`` with an ok:false body."""
        with self._lock:
            self._fail.extend([(status, description)] * n)

    def delay_next(self, n: int, seconds: float) -> None:
        """The next ``n`` send calls wait ``seconds`` before being processed normally."""
        with self._lock:
            self._delay.extend([seconds] * n)

    def drop_next(self, n: int) -> None:
        """The next ``n`` send calls get their connection aborted without an answer.

        (Falls back to answering 504 after DROP_FALLBACK_SECONDS if the
        transport cannot be found, e.g. with an unexpected uvicorn version.)
        """
        with self._lock:
            self._drop += n

    def reset_faults(self) -> None:
        with self._lock:
            self.blocked_chats.clear()
            self._fail.clear()
            self._delay.clear()
            self._drop = 0

    def _check_rate(self, chat_id: Any) -> None:
        now = time.monotonic()
        windows: list[tuple[collections.deque[float], float]] = []
        if self.rate_limit_per_second:
            windows.append((self._window, self.rate_limit_per_second))
        if self.per_chat_limit_per_second and chat_id is not None:
            windows.append((self._chat_windows[str(chat_id)], self.per_chat_limit_per_second))
        for window, limit in windows:
            while window and now - window[0] >= 1.0:
                window.popleft()
            if len(window) >= limit:
                self.count_429 += 1
                raise _ApiError(
                    429, f"Too Many Requests: retry after {self.retry_after}",
                    {"retry_after": self.retry_after},
                )
        for window, _ in windows:
            window.append(now)

    # ------------------------------------------------------------------ recording helpers
    def calls_of(self, method: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.method == method]

    def sent_messages(self, chat_id: Any = None) -> list[Call]:
        """All send-method calls (any outcome), optionally for one chat."""
        with self._lock:
            return [c for c in self.calls if c.method in SEND_METHODS
                    and (chat_id is None or _same_chat(c.chat_id, chat_id))]

    def delivered_texts(self, chat_id: Any = None) -> list[str]:
        """Texts/captions of successfully delivered send calls, in order."""
        with self._lock:
            return [c.text for c in self.delivered if c.text is not None
                    and (chat_id is None or _same_chat(c.chat_id, chat_id))]

    def last_bot_message(self, chat_id: Any) -> dict[str, Any] | None:
        with self._lock:
            return self._last_bot_message.get(_chat_key(chat_id))

    def dump(self, last: int = 25) -> str:
        with self._lock:
            lines = [c.short() for c in self.calls[-last:]]
            pending = len(self._pending)
        return "\n".join([f"pending updates: {pending}; last {len(lines)} calls:", *lines])

    # ------------------------------------------------------------------ files
    def add_file(self, content: bytes, suffix: str = ".bin", *, kind: str = "documents") -> str:
        with self._lock:
            n = next(self._ids)
            file_id = f"FILE{n:06d}{suffix.strip('.').upper()}"
            self._files[file_id] = {
                "file_id": file_id,
                "file_unique_id": f"U{n:06d}",
                "file_size": len(content),
                "file_path": f"{kind}/file_{n}.{suffix.lstrip('.') or 'bin'}",
                "content": bytes(content),
            }
            return file_id

    def file_content(self, file_id: str) -> bytes:
        with self._lock:
            return self._files[file_id]["content"]

    def _file_meta(self, file_id: str) -> dict[str, Any]:
        info = self._files[file_id]
        return {"file_id": file_id, "file_unique_id": info["file_unique_id"], "file_size": info["file_size"]}

    def _file_from_param(self, value: Any, suffix: str, kind: str) -> str:
        if isinstance(value, dict) and "content" in value:
            filename = value.get("filename") or ""
            ext = filename.rsplit(".", 1)[-1] if "." in filename else suffix
            return self.add_file(value["content"], ext, kind=kind)
        if isinstance(value, str) and value in self._files:
            return value
        return self.add_file(b"", suffix, kind=kind)  # URL or unknown file_id

    # ------------------------------------------------------------------ updates
    def push_update(self, update: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            update = dict(update)
            update["update_id"] = next(self._update_ids)
            self._pending.append(update)
            self.updates.append(update)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._notify)
            except RuntimeError:
                pass
        return update

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = asyncio.Event()

    def _next_message_id(self, chat_id: Any) -> int:
        with self._lock:
            counter = self._message_ids.setdefault(_chat_key(chat_id), itertools.count(1))
            return next(counter)

    def _user(self, chat_id: Any, first_name: str | None = None, language_code: str | None = None) -> dict:
        with self._lock:
            key = _chat_key(chat_id)
            user = self._users.get(key) or {"id": key, "is_bot": False, "first_name": "Ayşe",
                                             "language_code": "tr"}
            if first_name is not None:
                user["first_name"] = first_name
            if language_code is not None:
                user["language_code"] = language_code
            self._users[key] = user
            return dict(user)

    def _chat(self, chat_id: Any) -> dict[str, Any]:
        key = _chat_key(chat_id)
        chat = {"id": key, "type": "private"}
        user = self._users.get(key)
        if user:
            chat["first_name"] = user["first_name"]
        return chat

    def _user_message(self, chat_id: Any, **content: Any) -> dict[str, Any]:
        user = self._user(chat_id)
        return {"message_id": self._next_message_id(chat_id), "date": int(time.time()),
                "chat": self._chat(chat_id), "from": user, **content}

    def push_text(self, chat_id: Any, text: str, *, first_name: str = "Ayşe",
                  language_code: str = "tr") -> dict[str, Any]:
        self._user(chat_id, first_name, language_code)
        message = self._user_message(chat_id, text=text)
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": _utf16_len(command)}]
        return self.push_update({"message": message})

    def push_callback(self, chat_id: Any, data: str, message_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            key = _chat_key(chat_id)
            if message_id is None:
                message = self._last_bot_message.get(key)
            else:
                message = self._messages.get((key, message_id))
            if message is None:  # synthesize a bot message so edits work
                message = self._store_bot_message(chat_id, {"text": "…"}, message_id)
            query = {"id": str(next(self._ids)), "from": self._user(chat_id),
                     "chat_instance": f"ci{key}", "message": json.loads(json.dumps(message)),
                     "data": data}
        return self.push_update({"callback_query": query})

    def push_location(self, chat_id: Any, lat: float, lon: float) -> dict[str, Any]:
        return self.push_update({"message": self._user_message(
            chat_id, location={"latitude": lat, "longitude": lon})})

    def push_photo(self, chat_id: Any, content: bytes, caption: str | None = None) -> dict[str, Any]:
        sizes = []
        for width, height in ((90, 67), (320, 240), (1280, 960)):
            file_id = self.add_file(content, ".jpg", kind="photos")
            sizes.append({**self._file_meta(file_id), "width": width, "height": height})
        extra = {"caption": caption} if caption is not None else {}
        return self.push_update({"message": self._user_message(chat_id, photo=sizes, **extra)})

    def push_voice(self, chat_id: Any, content: bytes, duration: int = 3) -> dict[str, Any]:
        file_id = self.add_file(content, ".oga", kind="voice")
        voice = {**self._file_meta(file_id), "duration": duration, "mime_type": "audio/ogg"}
        return self.push_update({"message": self._user_message(chat_id, voice=voice)})

    def push_document(self, chat_id: Any, content: bytes, filename: str = "belge.pdf",
                      mime_type: str = "application/pdf", caption: str | None = None) -> dict[str, Any]:
        suffix = filename.rsplit(".", 1)[-1] if "." in filename else "bin"
        file_id = self.add_file(content, suffix, kind="documents")
        document = {**self._file_meta(file_id), "file_name": filename, "mime_type": mime_type}
        extra = {"caption": caption} if caption is not None else {}
        return self.push_update({"message": self._user_message(chat_id, document=document, **extra)})

    def push_sticker(self, chat_id: Any, emoji: str = "👍") -> dict[str, Any]:
        file_id = self.add_file(b"RIFF\x00\x00\x00\x00WEBP", ".webp", kind="stickers")
        sticker = {**self._file_meta(file_id), "type": "regular", "width": 512, "height": 512,
                   "is_animated": False, "is_video": False, "emoji": emoji}
        return self.push_update({"message": self._user_message(chat_id, sticker=sticker)})

    def push_contact(self, chat_id: Any, phone: str, first_name: str | None = None) -> dict[str, Any]:
        user = self._user(chat_id)
        contact = {"phone_number": phone, "first_name": first_name or user["first_name"],
                   "user_id": user["id"]}
        return self.push_update({"message": self._user_message(chat_id, contact=contact)})

    # ------------------------------------------------------------------ bot messages
    def _store_bot_message(self, chat_id: Any, content: dict[str, Any],
                           message_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            key = _chat_key(chat_id)
            message = {"message_id": message_id or self._next_message_id(chat_id),
                       "date": int(time.time()), "chat": self._chat(chat_id),
                       "from": dict(self.bot_user)}
            message.update({k: v for k, v in content.items() if v is not None})
            self._messages[(key, message["message_id"])] = message
            if message_id is None:
                self._last_bot_message[key] = message
            return message

    @staticmethod
    def _inline_markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")  # only inline keyboards are echoed by Telegram
        return markup if isinstance(markup, dict) and "inline_keyboard" in markup else None

    def _edit(self, params: dict[str, Any], new: dict[str, Any]) -> Any:
        if params.get("inline_message_id"):
            return True
        key = (_chat_key(params.get("chat_id")), params.get("message_id"))
        with self._lock:
            message = self._messages.get(key)
            if message is None:
                raise _ApiError(400, "Bad Request: message to edit not found")
            updated = {k: v for k, v in message.items() if k not in ("reply_markup", "edit_date")}
            updated.update({k: v for k, v in new.items() if v is not None})
            if all(updated.get(k) == message.get(k) for k in ("text", "caption", "reply_markup")):
                raise _ApiError(400, "Bad Request: message is not modified: specified new message "
                                     "content and reply markup are exactly the same as a current "
                                     "content and reply markup of a message")
            updated["edit_date"] = int(time.time())
            message.clear()
            message.update(updated)
            return dict(message)

    # ------------------------------------------------------------------ API methods
    def _dispatch(self, method: str, p: dict[str, Any]) -> Any:
        chat = p.get("chat_id")
        if method == "getMe":
            return dict(self.bot_user)
        if method in ("deleteWebhook", "setWebhook"):
            with self._lock:
                self.webhook_url = p.get("url", "") if method == "setWebhook" else ""
                if p.get("drop_pending_updates"):
                    self._pending.clear()
            return True
        if method == "getWebhookInfo":
            with self._lock:
                return {"url": self.webhook_url, "has_custom_certificate": False,
                        "pending_update_count": len(self._pending)}
        if method == "setMyCommands":
            self.commands[json.dumps(p.get("scope"), sort_keys=True) + str(p.get("language_code"))] = \
                list(p.get("commands") or [])
            return True
        if method == "getMyCommands":
            return self.commands.get(json.dumps(p.get("scope"), sort_keys=True) + str(p.get("language_code")), [])
        if method == "deleteMyCommands":
            self.commands.pop(json.dumps(p.get("scope"), sort_keys=True) + str(p.get("language_code")), None)
            return True
        if method in ("answerCallbackQuery", "sendChatAction", "close", "logOut"):
            return True
        if method == "getFile":
            with self._lock:
                info = self._files.get(str(p.get("file_id")))
                if info is None:
                    raise _ApiError(400, "Bad Request: invalid file_id")
                return {k: v for k, v in info.items() if k != "content"}
        if method in CHAT_METHODS and chat is None and not p.get("inline_message_id"):
            raise _ApiError(400, "Bad Request: chat_id is empty")
        if method in ("sendMessage", "editMessageText") and not p.get("text"):
            raise _ApiError(400, "Bad Request: message text is empty")
        if method in ("sendMessage", "editMessageText") and _utf16_len(str(p["text"])) > TEXT_LIMIT:
            raise _ApiError(400, "Bad Request: message is too long")
        if p.get("caption") and _utf16_len(str(p["caption"])) > CAPTION_LIMIT:
            raise _ApiError(400, "Bad Request: message caption is too long")
        if method == "sendMessage":
            return self._store_bot_message(chat, {"text": p.get("text"), "entities": p.get("entities"),
                                                  "reply_markup": self._inline_markup(p)})
        if method == "sendDocument":
            file_id = self._file_from_param(p.get("document"), "bin", "documents")
            doc = self._file_meta(file_id)
            upload = p.get("document")
            if isinstance(upload, dict):
                doc["file_name"] = upload.get("filename")
                doc["mime_type"] = upload.get("mime_type") or "application/octet-stream"
            return self._store_bot_message(chat, {"document": doc, "caption": p.get("caption"),
                                                  "reply_markup": self._inline_markup(p)})
        if method == "sendPhoto":
            file_id = self._file_from_param(p.get("photo"), "jpg", "photos")
            photo = [{**self._file_meta(file_id), "width": 1280, "height": 960}]
            return self._store_bot_message(chat, {"photo": photo, "caption": p.get("caption"),
                                                  "reply_markup": self._inline_markup(p)})
        if method in ("sendLocation", "sendVenue"):
            location = {"latitude": p.get("latitude"), "longitude": p.get("longitude")}
            content: dict[str, Any] = {"location": location, "reply_markup": self._inline_markup(p)}
            if method == "sendVenue":
                content["venue"] = {"location": location, "title": p.get("title"),
                                    "address": p.get("address")}
            return self._store_bot_message(chat, content)
        if method == "editMessageText":
            return self._edit(p, {"text": p.get("text"), "entities": p.get("entities"),
                                  "reply_markup": self._inline_markup(p)})
        if method == "editMessageReplyMarkup":
            return self._edit(p, {"reply_markup": self._inline_markup(p)})
        raise _ApiError(404, "Not Found")

    async def _get_updates(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        offset = p.get("offset")
        limit = max(1, min(int(p.get("limit") or 100), 100))
        timeout = float(p.get("timeout") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._lock:
            if self.webhook_url:
                raise _ApiError(409, "Conflict: can't use getUpdates method while webhook is active; "
                                     "use deleteWebhook to delete the webhook first")
        while True:
            wake = self._wake
            with self._lock:
                if isinstance(offset, int) and offset < 0:
                    self._pending = self._pending[offset:]
                elif isinstance(offset, int) and offset > 0:
                    self._pending = [u for u in self._pending if u["update_id"] >= offset]
                batch = self._pending[:limit]
            remaining = deadline - loop.time()
            stopping = self._stop_event is not None and self._stop_event.is_set()
            if batch or remaining <= 0 or stopping or wake is None:
                return [json.loads(json.dumps(u)) for u in batch]
            try:
                await asyncio.wait_for(wake.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up early when the server stops."""
        assert self._stop_event is not None
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _abort_connection(self, request: Request) -> bool:
        client = tuple(request.scope.get("client") or ())
        with self._transport_lock:
            transport = self._transports.get(client)
        if transport is None:
            return False
        transport.abort()
        await asyncio.sleep(0.05)  # let connection_lost mark the cycle as disconnected
        return True

    # ------------------------------------------------------------------ HTTP layer
    async def _read_params(self, request: Request) -> dict[str, Any]:
        raw: dict[str, Any] = dict(request.query_params)
        body = await request.body()
        ctype = request.headers.get("content-type", "")
        if body:
            if "json" in ctype:
                data = json.loads(body)
                if isinstance(data, dict):
                    return {**raw, **data}
            elif "multipart/form-data" in ctype:
                raw.update(_parse_multipart(body, ctype))
            else:
                raw.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        return {k: _decode_value(k, v) for k, v in raw.items()}

    def _canonical(self, method: str) -> str:
        known = {m.lower(): m for m in (*CHAT_METHODS, "getMe", "getUpdates", "deleteWebhook",
                                        "setWebhook", "getWebhookInfo", "setMyCommands", "getMyCommands",
                                        "deleteMyCommands", "answerCallbackQuery", "getFile", "close",
                                        "logOut")}
        return known.get(method.lower(), method)

    async def _api(self, request: Request) -> Response:
        method = self._canonical(request.path_params["method"])
        try:
            params = await self._read_params(request)
        except (ValueError, _ApiError):
            params = {}
        call = Call(method=method, params=params, time=time.monotonic())
        with self._lock:
            self.calls.append(call)
        try:
            if request.path_params["token"] != self.token:
                raise _ApiError(401, "Unauthorized")
            if method in SEND_METHODS:
                with self._lock:
                    drop = self._drop > 0
                    self._drop -= int(drop)
                    delay = self._delay.pop(0) if self._delay and not drop else 0.0
                if drop:
                    if await self._abort_connection(request):
                        return Response(status_code=499)  # never sent: the connection is gone
                    await self._sleep(DROP_FALLBACK_SECONDS)
                    raise _ApiError(504, "Gateway Timeout")
                if delay:
                    await self._sleep(delay)
                with self._lock:
                    fail = self._fail.pop(0) if self._fail else None
                if fail is not None:
                    raise _ApiError(fail[0], fail[1])
            if method in CHAT_METHODS and str(params.get("chat_id")) in self.blocked_chats:
                raise _ApiError(403, "Forbidden: bot was blocked by the user")
            if method == "getUpdates":
                result = await self._get_updates(params)
            else:
                with self._lock:
                    if method in SEND_METHODS:
                        self._check_rate(params.get("chat_id"))
                    result = self._dispatch(method, params)
                    if method in SEND_METHODS:
                        self.delivered.append(call)
            body, status = {"ok": True, "result": result}, 200
        except _ApiError as err:
            body, status = err.body(), err.status
        except Exception as err:  # noqa: BLE001 - a bug in the fake: answer 500 and keep the details
            body, status = {"ok": False, "error_code": 500, "description": f"fake server error: {err!r}"}, 500
        with self._lock:
            call.status, call.response = status, body
        return JSONResponse(body, status_code=status)

    def record(self) -> dict[str, Any]:
        """What a measurement needs: the delivered sends (chat id, arrival time) and the 429s."""
        with self._lock:
            return {"delivered": [[c.chat_id, c.time] for c in self.delivered], "count_429": self.count_429}

    async def _record(self, request: Request) -> Response:
        return JSONResponse(self.record())

    async def _download(self, request: Request) -> Response:
        if request.path_params["token"] != self.token:
            return JSONResponse(_ApiError(401).body(), status_code=401)
        path = request.path_params["file_path"]
        with self._lock:
            content = next((f["content"] for f in self._files.values() if f["file_path"] == path), None)
        if content is None:
            return JSONResponse(_ApiError(404).body(), status_code=404)
        return Response(content, media_type="application/octet-stream")

    def _build_app(self) -> Starlette:
        return Starlette(routes=[
            Route("/file/bot{token}/{file_path:path}", self._download, methods=["GET"]),
            Route("/bot{token}/{method}", self._api, methods=["GET", "POST"]),
            Route("/_fake/record", self._record, methods=["GET"]),
        ])


# ---------------------------------------------------------------------- in a process of its own
class FakeTelegramProcess:
    """A FakeTelegramServer in a child process (see module docstring). The child stops when
    `stop()` closes its stdin, or when this process dies."""

    def __init__(self, token: str = "123:TEST", rate_limit_per_second: float | None = None,
                 per_chat_limit_per_second: float | None = None) -> None:
        self.token = token
        self.rate_limit_per_second = rate_limit_per_second
        self.per_chat_limit_per_second = per_chat_limit_per_second
        self._proc: subprocess.Popen | None = None
        self._root: str | None = None

    @property
    def root(self) -> str:
        if self._root is None:
            raise RuntimeError("FakeTelegramProcess is not started")
        return self._root

    def start(self, timeout: float = 20.0) -> "FakeTelegramProcess":
        if self._proc is not None:
            return self
        args = [sys.executable, "-m", "tests.fakes.telegram_api", "--serve", "--token", self.token]
        if self.rate_limit_per_second:
            args += ["--rate-limit", str(self.rate_limit_per_second)]
        if self.per_chat_limit_per_second:
            args += ["--per-chat-limit", str(self.per_chat_limit_per_second)]
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      cwd=Path(__file__).resolve().parents[2])
        ready = threading.Timer(timeout, self._proc.kill)  # a child that never says where it listens
        ready.start()
        try:
            line = self._proc.stdout.readline().strip()
        finally:
            ready.cancel()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"FakeTelegramProcess failed to start ({line or 'no output'})")
        self._root = line
        return self

    def record(self) -> dict[str, Any]:
        with urlopen(f"{self.root}/_fake/record", timeout=30) as answer:
            return json.loads(answer.read())

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    def __enter__(self) -> "FakeTelegramProcess":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _run_ahead() -> None:
    """Real-time scheduling for this process and the threads it starts (root or CAP_SYS_NICE;
    the server is idle between requests), else a higher priority, else nothing."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(os.sched_get_priority_min(os.SCHED_FIFO)))
        return
    except (AttributeError, OSError):
        pass
    try:
        os.nice(-10)
    except OSError:
        pass


def _serve(argv: list[str]) -> int:
    """The child of FakeTelegramProcess: print the server's root, serve until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.telegram_api")
    parser.add_argument("--serve", action="store_true", required=True)
    parser.add_argument("--token", default="123:TEST")
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--per-chat-limit", type=float, default=None)
    args = parser.parse_args(argv)
    server = FakeTelegramServer(token=args.token, rate_limit_per_second=args.rate_limit,
                                per_chat_limit_per_second=args.per_chat_limit)
    # Arrival times are the measurement, and a real Bot API server does not share our CPU: a server
    # held off the CPU stamps the requests that came meanwhile late, then together (tens of ms on a
    # busy machine, even at nice -10). So it runs ahead of everything else when allowed, and without
    # full garbage collections, whose pause grows with the record (tens of ms at 20,000 calls).
    _run_ahead()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000_000)
    with server:
        print(server.root, flush=True)
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
