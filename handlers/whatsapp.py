"""The WhatsApp channel, through Twilio.

Inbound: Twilio posts every message to `POST /whatsapp/twilio` (form-encoded, signed with the
account's auth token in X-Twilio-Signature over PUBLIC_BASE_URL + path and the parameters). A
forged or unsigned request gets 403 and nothing is written; an oversized one 413. A good one is
answered at once with an empty TwiML `<Response/>` and handled after, in a tracked task, through
`App.handle` (one resident's messages in order). `external_id` is the MessageSid, so a re-delivered
webhook is ignored by the engine. Photos, voice notes and files are downloaded with the account's
credentials (only from Twilio's hosts, refused over MEDIA_MAX_BYTES) when the resident's state
takes them; bot/app.py then judges, cleans and stores them in MEDIA_DIR (storage/media.py).

Outbound (`WhatsAppSender`, handlers.delivery.Sender): Twilio's REST client (`TWILIO_API_URL`), run in
a thread. Choices become a numbered list ("1 · Yol ve kaldırım"), answered by number or by the
option's words (the engine resolves both); a number typed after a proactive message with choices
answers that message (`numbers_answer_proactive`: conversations/proactive.py). Bodies over 1600
characters are split on word boundaries. Documents and photos go as media from a signed link
that expires (`GET /whatsapp/files/{token}/{name}` under PUBLIC_BASE_URL), served by
handlers.files.stored_file (type from the bytes, nosniff, no caching). Twilio reports delivery to
`POST /whatsapp/twilio/status`, recorded on the
outbox row (delivery_status, delivery_error) found by the MessageSid the sender returned.

WhatsApp's 24-hour customer-service window: a resident who wrote in the last 24 hours gets free
text. Outside it, proactive messages (any outbox kind but "reply") go as the approved template of
their kind (TWILIO_TEMPLATE_NOTIFICATION / _REMINDER / _BROADCAST; other kinds use the
notification template), the text as its variable {{1}}; without one the message is not sent and
SendError(SendFailure.WINDOW, reason) makes the dispatcher record it as unsendable.

Twilio errors in the dispatcher's terms (handlers.delivery.SendFailure): 63016 (outside the window) →
WINDOW; 21610 (the resident sent STOP) → UNREACHABLE; 63018 or HTTP 429 → RATE_LIMITED; other 4xx
→ PERMANENT; 5xx and network failures → RETRYABLE.

Several processes: files are written by whichever process sends (`katilim run` or `katilim worker`)
and served by the one with the HTTP server, so they must share MEDIA_DIR. Outside the window a
message goes as its template's text only (a photo or a document needs a media template).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import parse_qsl, quote, urlparse

import httpx
from fastapi import Request, Response
from sqlmodel import select
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from conversations.messages import Inbound, Kind, Media, Outbound
from handlers import kit
from handlers.delivery import ChannelLimits, SendError, SendFailure
from handlers.files import stored_file
from handlers.kit import AddressLocks, ChannelSetupError, parse_command, split_text, utf16_len
from storage import media as media_store
from storage.attachments import suffix_of
from storage.db import aware, transaction, utcnow
from storage.media import MediaTooLarge
from storage.models import ChannelIdentity, OutboxMessage

log = logging.getLogger(__name__)

CHANNEL = "whatsapp"
WEBHOOK_PATH = "/whatsapp/twilio"
STATUS_PATH = "/whatsapp/twilio/status"
FILES_PATH = "/whatsapp/files"
SIGNATURE_HEADER = "X-Twilio-Signature"
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
MAX_WEBHOOK_BYTES = 128 * 1024   # a WhatsApp message is at most 4096 characters; media come as URLs
BODY_LIMIT = 1600                # Twilio's limit for one message body
CAPTION_LIMIT = 1024             # a media caption
TEMPLATE_VARIABLE_LIMIT = 1000   # what fits in a template's {{1}}
WINDOW = timedelta(hours=24)
FILE_TTL = timedelta(hours=1)    # how long a signed file link works (Twilio fetches it at once)
HTTP_TIMEOUT = 20.0
MAX_MEDIA = 10
RETRY_AFTER_DEFAULT = 1.0
TEMPLATE_SETTINGS = {"notification": "twilio_template_notification", "reminder": "twilio_template_reminder",
                     "broadcast": "twilio_template_broadcast"}
# Status callbacks recorded on the outbox row, and their order (a late "delivered" never hides "read").
STATUS_RANK = {"delivered": 1, "read": 2, "failed": 3, "undelivered": 3}
OUTBOUND_STATUSES = {"accepted", "scheduled", "queued", "sending", "sent", "delivered", "read", "failed",
                     "undelivered", "canceled"}


# ---------------------------------------------------------------- pure helpers
def normalize_address(value: str) -> str:
    """"whatsapp:+905551234567" from a From ("whatsapp:+90...") or a WaId ("9055..."); "" if neither."""
    number = re.sub(r"[^\d+]", "", (value or "").strip().removeprefix("whatsapp:"))
    digits = number.lstrip("+")
    if not re.fullmatch(r"[1-9]\d{6,14}", digits):
        return ""
    return f"whatsapp:+{digits}"


def to_inbound(form: dict[str, str]) -> Inbound | None:
    """A Twilio webhook's parameters as an Inbound; None for what is not a resident's message
    (reactions, a status update posted to the wrong URL). Raises ValueError when malformed."""
    sid = (form.get("MessageSid") or form.get("SmsMessageSid") or "").strip()
    address = normalize_address(form.get("From", "")) or normalize_address(form.get("WaId", ""))
    if not re.fullmatch(r"[A-Z]{2}[0-9a-fA-F]{32}", sid) or not address:
        raise ValueError("MessageSid or From missing or malformed")
    message_type = (form.get("MessageType") or "").lower()
    if message_type == "reaction" or ((form.get("MessageStatus") or "").lower() in OUTBOUND_STATUSES
                                      and not form.get("Body") and form.get("NumMedia", "0") in ("", "0")):
        return None  # a reaction, or a status callback sent to the wrong URL: nothing to answer
    base: dict[str, Any] = dict(channel=CHANNEL, address=address, display_name=(form.get("ProfileName") or "")[:128],
                                external_id=sid, received_at=utcnow())
    body = form.get("Body") or ""
    payload = form.get("ButtonPayload") or form.get("ListId") or ""
    if payload:
        return Inbound(kind=Kind.CHOICE, choice=payload[:128], text=form.get("ButtonText") or form.get("ListTitle")
                       or body, **base)
    latitude, longitude = _float(form.get("Latitude")), _float(form.get("Longitude"))
    if latitude is not None and longitude is not None:
        return Inbound(kind=Kind.LOCATION, latitude=latitude, longitude=longitude,
                       text=form.get("Label") or form.get("Address") or "", **base)
    try:
        count = min(int(form.get("NumMedia") or 0), MAX_MEDIA)
    except ValueError:
        count = 0
    media = []
    for i in range(count):
        url = form.get(f"MediaUrl{i}") or ""
        if url:
            media.append(Media(ref=url, content_type=(form.get(f"MediaContentType{i}") or "").lower()))
    if message_type == "sticker":
        return Inbound(kind=Kind.STICKER, **base)
    if media:
        content_type = media[0].content_type
        kind = (Kind.PHOTO if content_type.startswith("image/") else
                Kind.VOICE if content_type.startswith("audio/") else Kind.DOCUMENT)
        return Inbound(kind=kind, text=body, media=media, **base)
    command = parse_command(body)
    if command is not None:
        return Inbound(kind=Kind.COMMAND, command=command.name, text=command.text, **base)
    if body.strip():
        return Inbound(kind=Kind.TEXT, text=body, **base)
    return Inbound(kind=Kind.OTHER, **base)


def _float(value: str | None) -> float | None:
    try:
        number = float(value) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and abs(number) <= 180 else None


def split_body(text: str, limit: int = BODY_LIMIT) -> list[str]:
    """A text in message bodies Twilio accepts (its limit counts UTF-16 code units)."""
    return split_text(text, limit, utf16_len)


def render(out: Outbound) -> str:
    """An Outbound as WhatsApp text: the text, a venue's title, the choices numbered."""
    parts = []
    if out.text:
        parts.append(out.text)
    if out.latitude is not None and out.longitude is not None and out.venue_title:
        parts.append(f"📍 {out.venue_title}")
    if out.request_location and out.location_hint:
        # No button asks for a location here: Twilio's content types for WhatsApp can send a pin
        # (twilio/location) but none requests one, and a plain message has no buttons at all
        # (https://www.twilio.com/docs/content/content-types-overview; Meta's own Cloud API has an
        # interactive location_request_message, which Twilio does not offer). So the message says
        # how to share a location with WhatsApp's attachment menu.
        parts.append(out.location_hint)
    if out.choices:
        parts.append("\n".join(f"{i} · {choice.label}" for i, choice in enumerate(out.choices, 1)))
    return "\n\n".join(parts)


def template_variable(out: Outbound) -> str:
    """The text of a message as a template variable: WhatsApp refuses new lines, tabs and long
    runs of spaces there, and the template body has a length limit."""
    text = render(out)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > TEMPLATE_VARIABLE_LIMIT:
        text = text[:TEMPLATE_VARIABLE_LIMIT - 1].rstrip() + "…"
    return text


def send_error(exc: BaseException) -> SendError:
    """A Twilio failure in the dispatcher's terms (see the module docstring)."""
    if isinstance(exc, (TwilioRestException, TwilioServiceException)):
        code, status = exc.code, int(getattr(exc, "status", 0) or 0)
        detail = getattr(exc, "msg", "") or getattr(exc, "title", "") or ""
        reason = f"Twilio {code}: {detail}".strip()[:500]
        if code == 63016:
            return SendError(SendFailure.WINDOW, reason)
        if code == 21610:
            return SendError(SendFailure.UNREACHABLE, reason)
        if code == 63018 or status == 429:
            return SendError(SendFailure.RATE_LIMITED, reason, RETRY_AFTER_DEFAULT)
        if 400 <= status < 500:
            return SendError(SendFailure.PERMANENT, reason)
        return SendError(SendFailure.RETRYABLE, reason)  # 5xx, or no status at all
    # requests' timeouts and refused connections, OSError, TwilioException, anything else
    return SendError(SendFailure.RETRYABLE, f"{type(exc).__name__}: {exc}"[:500])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------- files sent as media
class OutboundFiles:
    """Files WhatsApp fetches from us: written to MEDIA_DIR/whatsapp-out named by their SHA-256,
    reachable for FILE_TTL through a link signed with a key derived from the auth token."""

    def __init__(self, settings) -> None:
        self.dir = Path(settings.media_dir) / "whatsapp-out"
        self.base_url = settings.public_base_url.rstrip("/")
        self.limit = settings.media_max_bytes
        self.key = hmac.new(settings.twilio_auth_token.encode(), b"katilim:whatsapp-files", hashlib.sha256).digest()

    def publish(self, data: bytes, filename: str, *, now: float | None = None) -> str:
        """A signed link to the bytes, named `filename`. The type it is served with is decided from
        the bytes when it is fetched (handlers.files.stored_file: JSON and .ics go as text/plain)."""
        if len(data) > self.limit:
            raise MediaTooLarge(len(data), self.limit)
        name = re.sub(r"[^\w.\-]", "_", Path(filename or "file").name)[:80] or "file"
        suffix = suffix_of(name)  # the copy's name erasure looks for (storage.attachments)
        target = media_store.path_for(self.dir, data, suffix)
        if target.exists():
            os.utime(target)  # published again: the clean-up keeps it for another FILE_TTL
        else:
            media_store.write_atomically(target, data)
        expires = int((now or time.time()) + FILE_TTL.total_seconds())
        payload = _b64(json.dumps({"f": target.name, "e": expires}, separators=(",", ":")).encode())
        signature = _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest()[:20])
        return f"{self.base_url}{FILES_PATH}/{payload}.{signature}/{quote(name)}"

    def open(self, token: str, *, now: float | None = None) -> Path | None:
        """The file a token names, or None (forged, expired, gone)."""
        payload, _, signature = token.partition(".")
        try:
            expected = _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest()[:20])
            if not hmac.compare_digest(expected, signature):
                return None
            data = json.loads(_unb64(payload))
            if float(data["e"]) < (now or time.time()):
                return None
            name = str(data["f"])
        except (ValueError, KeyError, TypeError):
            return None
        if not re.fullmatch(r"[0-9a-f]{64}(\.[a-z0-9]{1,8})?", name):
            return None
        path = self.dir / name
        return path if path.is_file() else None

    def clean(self, older_than: timedelta = FILE_TTL * 2) -> int:
        """Delete files nobody can fetch any more (exports hold personal data: not kept)."""
        if not self.dir.exists():
            return 0
        limit = time.time() - older_than.total_seconds()
        removed = 0
        for path in self.dir.iterdir():
            try:
                if path.is_file() and path.stat().st_mtime < limit:
                    path.unlink()
                    removed += 1
            except OSError:
                pass
        return removed


# ---------------------------------------------------------------- sending
class WhatsAppSender:
    """Sends an Outbound through Twilio's Messages API (handlers.delivery.Sender)."""

    channel = CHANNEL

    def __init__(self, settings, db, files: OutboundFiles | None = None) -> None:
        self.settings = settings
        self.db = db
        self.files = files or OutboundFiles(settings)
        self.client = Client(settings.twilio_account_sid, settings.twilio_auth_token,
                             http_client=TwilioHttpClient(timeout=HTTP_TIMEOUT))
        self.client.api.base_url = settings.twilio_api_url  # Twilio's own, or a local test server
        base = settings.public_base_url.rstrip("/")
        self.status_callback = f"{base}{STATUS_PATH}" if base else None

    gates_on_wire = False  # sent from a thread by twilio-python's client: gated before each send

    def limits(self, settings) -> ChannelLimits:
        """The sender's Messages API throughput: TWILIO_MESSAGES_PER_SECOND (no per-chat limit)."""
        return ChannelLimits(per_second=settings.twilio_messages_per_second)

    async def warm_up(self) -> None:
        """Nothing to open ahead: each send is one HTTPS request from a thread."""

    async def close(self) -> None:
        """Nothing held open between sends."""

    async def send(self, address: str, out: Outbound, *, kind: str = "reply") -> str:
        return await asyncio.to_thread(self.send_now, address, out, kind)

    def send_now(self, address: str, out: Outbound, kind: str = "reply") -> str:
        """Blocking: deliver one message, return the (last) MessageSid, raise SendError."""
        try:
            template = None
            if kind != "reply":
                last = self.last_inbound(address)
                if last is None or utcnow() - last > WINDOW:
                    template = self.template_for(kind)
                    if not template:
                        when = last.isoformat(timespec="minutes") if last else "never"
                        raise SendError(SendFailure.WINDOW, f"outside WhatsApp's 24-hour window (last message from the "
                                                  f"resident: {when}) and no template for {kind!r} messages "
                                                  f"(TWILIO_TEMPLATE_{kind.upper()})")
                    return self._create(address, content_sid=template,
                                        content_variables=json.dumps({"1": template_variable(out)},
                                                                     ensure_ascii=False))
            try:
                return self._send_free(address, out)
            except TwilioRestException as exc:
                fallback = self.template_for(kind) if kind != "reply" else ""
                if exc.code != 63016 or not fallback:
                    raise
                # our record said the window was open; Twilio knows better: the template goes
                return self._create(address, content_sid=fallback,
                                    content_variables=json.dumps({"1": template_variable(out)}, ensure_ascii=False))
        except SendError:
            raise
        except MediaTooLarge as exc:
            raise SendError(SendFailure.PERMANENT, str(exc)) from exc
        except Exception as exc:
            if isinstance(exc, FileNotFoundError):
                raise SendError(SendFailure.PERMANENT, f"file to send is gone: {exc}") from exc
            raise send_error(exc) from exc

    def template_for(self, kind: str) -> str:
        name = TEMPLATE_SETTINGS.get(kind, "twilio_template_notification")
        return getattr(self.settings, name, "") or ""

    def last_inbound(self, address: str) -> datetime | None:
        with transaction(self.db) as db:
            last = db.exec(select(ChannelIdentity.last_inbound_at).where(
                ChannelIdentity.channel == CHANNEL, ChannelIdentity.address == address)).first()
        return aware(last)

    def _send_free(self, address: str, out: Outbound) -> str:
        media = self._media_urls(out)
        text = render(out)
        action = None
        if out.latitude is not None and out.longitude is not None:
            label = (out.venue_title or f"{out.latitude:.5f}, {out.longitude:.5f}")[:100].replace("|", " ")
            action = [f"geo:{out.latitude:.6f},{out.longitude:.6f}|{label}"]
            text = text or label
        if media and utf16_len(text) <= CAPTION_LIMIT:
            return self._create(address, body=text or None, media_url=media)
        pieces = split_body(text) if text else []
        last = ""
        for i, piece in enumerate(pieces):
            final = i == len(pieces) - 1
            last = self._create(address, body=piece, persistent_action=action if final else None)
        if media:
            last = self._create(address, media_url=media)
        if not last:
            raise SendError(SendFailure.PERMANENT, "nothing to send (empty message)")
        return last

    def _media_urls(self, out: Outbound) -> list[str]:
        urls = []
        if out.photo_path:
            path = Path(out.photo_path)
            if not path.is_absolute() and not path.exists():
                path = Path(self.settings.media_dir) / path
            urls.append(self.files.publish(path.read_bytes(), path.name))
        if out.document is not None:
            doc = out.document
            data = Path(doc.path).read_bytes() if doc.path else (doc.data or "").encode("utf-8")
            urls.append(self.files.publish(data, doc.filename))
        if urls and not self.files.base_url:
            raise SendError(SendFailure.PERMANENT, "PUBLIC_BASE_URL is not set: WhatsApp cannot fetch files")
        return urls

    def _create(self, address: str, **fields) -> str:
        fields = {k: v for k, v in fields.items() if v is not None}
        if self.status_callback:
            fields["status_callback"] = self.status_callback
        message = self.client.messages.create(from_=self.settings.twilio_whatsapp_from, to=address, **fields)
        return message.sid or ""


# ---------------------------------------------------------------- the channel
class _Params(dict):
    """Form parameters as name → list of values (what RequestValidator signs)."""

    def getlist(self, key: str) -> list[str]:
        return self[key]

    def first(self) -> dict[str, str]:
        return {k: v[0] for k, v in self.items()}


class WhatsAppChannel:
    """The WhatsApp channel (bot.app.Channel)."""

    name = CHANNEL
    # A typed number right after a proactive message with choices answers that message: a
    # numbered list has no buttons to say which question a number answers (conversations/proactive.py).
    numbers_answer_proactive = True

    def __init__(self, app) -> None:
        self.app = app
        self.settings = app.settings
        self.files = OutboundFiles(self.settings)
        self.sender = WhatsAppSender(self.settings, app.db, self.files)
        self.validator = RequestValidator(self.settings.twilio_auth_token)
        self.base_url = self.settings.public_base_url.rstrip("/")
        self.api_host = urlparse(self.settings.twilio_api_url).hostname or ""
        self._tasks: set[asyncio.Task] = set()
        self._locks = AddressLocks()
        self._accepting = True
        app.media_fetchers[CHANNEL] = self.fetch_media

    # -- lifecycle
    async def start(self) -> None:
        self._accepting = True
        log.info("WhatsApp (Twilio) webhook at %s%s, sending as %s", self.base_url, WEBHOOK_PATH,
                 self.settings.twilio_whatsapp_from)

    async def stop(self) -> None:
        """Finish the messages accepted; a webhook arriving while the server still runs is then
        handled before it is answered."""
        self._accepting = False
        await self.idle(timeout=30)

    async def idle(self, timeout: float | None = None) -> None:
        """Wait until every accepted message is handled."""
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        while self._tasks:
            remaining = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if remaining is not None and remaining <= 0:
                log.warning("%d WhatsApp messages still being handled at stop", len(self._tasks))
                return
            await asyncio.wait(set(self._tasks), timeout=remaining)

    # -- HTTP
    def mount(self, http_app) -> None:
        http_app.add_api_route(WEBHOOK_PATH, self.webhook, methods=["POST"], include_in_schema=False)
        http_app.add_api_route(STATUS_PATH, self.status_webhook, methods=["POST"], include_in_schema=False)
        http_app.add_api_route(FILES_PATH + "/{token}/{name}", self.serve_file, methods=["GET", "HEAD"],
                               include_in_schema=False)

    async def _signed_form(self, request: Request, path: str) -> _Params | Response:
        """The request's parameters when Twilio signed them; otherwise the response to give."""
        body = await kit.read_body(request, MAX_WEBHOOK_BYTES)
        if body is None:
            return Response(status_code=413)
        signature = request.headers.get(SIGNATURE_HEADER, "")
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            pairs = None
        params = _Params()
        for key, value in pairs or ():
            params.setdefault(key, []).append(value)
        url = f"{self.base_url}{path}" + (f"?{request.url.query}" if request.url.query else "")
        if not signature or pairs is None or not self.validator.validate(url, params, signature):
            log.warning("WhatsApp webhook %s with a missing or wrong signature from %s refused", path,
                        request.client.host if request.client else "?")
            return Response(status_code=403)
        if params.get("AccountSid", [""])[0] != self.settings.twilio_account_sid:
            log.warning("WhatsApp webhook for another Twilio account refused")
            return Response(status_code=403)
        return params

    async def webhook(self, request: Request) -> Response:
        params = await self._signed_form(request, WEBHOOK_PATH)
        if isinstance(params, Response):
            return params
        try:
            inbound = to_inbound(params.first())
        except ValueError as exc:
            log.warning("WhatsApp webhook refused: %s", exc)
            return Response(status_code=400)
        if inbound is not None and not self._accepting:
            await self._process(inbound)  # stopping: handled before the answer, so nothing is lost
        elif inbound is not None:
            # Persisted before the answer: if this process dies before handling it, the
            # scheduler's "inbox" job hands it to the engine again.
            inbox_id = await self.app.accept(inbound)
            task = asyncio.create_task(self._process(inbound, inbox_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return Response(TWIML_EMPTY, media_type="text/xml")

    async def _process(self, inbound: Inbound, inbox_id: int | None = None) -> None:
        async with self._locks.hold(inbound.address):
            try:
                await kit.handle(self.app, inbound, inbox_id=inbox_id)
            except Exception:
                log.exception("WhatsApp message %s not handled", inbound.external_id)

    async def status_webhook(self, request: Request) -> Response:
        params = await self._signed_form(request, STATUS_PATH)
        if isinstance(params, Response):
            return params
        form = params.first()
        sid = (form.get("MessageSid") or form.get("SmsSid") or "").strip()
        status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
        if not sid or not status:
            return Response(status_code=400)
        if status in STATUS_RANK:
            error = ""
            if status in ("failed", "undelivered"):
                code, text = form.get("ErrorCode") or "", form.get("ErrorMessage") or ""
                error = (f"{code}: {text}" if code and text else code or text or status)[:255]
            for attempt in range(4):  # the sender's row may not be committed yet when Twilio is quick
                found = await asyncio.to_thread(record_status, self.app.db, sid, status, error)
                if found or not self._accepting:
                    break
                await asyncio.sleep(0.25 * (attempt + 1))
            else:
                log.info("status %s for unknown WhatsApp message %s", status, sid)
        return Response(status_code=204)

    async def serve_file(self, token: str, name: str) -> Response:
        path = self.files.open(token)
        response = stored_file(path, filename=name) if path is not None else None
        return response if response is not None else Response(status_code=404)

    # -- media
    async def fetch_media(self, media: Media) -> bytes:
        """A resident's file from Twilio (basic auth with the account's credentials), only from
        Twilio's hosts; MediaTooLarge over MEDIA_MAX_BYTES (the declared length, then what arrives).
        App._fetch_media judges, cleans and stores it."""
        limit = self.settings.media_max_bytes
        url = urlparse(media.ref)
        host = url.hostname or ""
        if url.scheme not in ("http", "https") or not (host == self.api_host or host == "twilio.com"
                                                      or host.endswith(".twilio.com")):
            raise ValueError(f"media URL {media.ref!r} is not Twilio's")
        auth = (self.settings.twilio_account_sid, self.settings.twilio_auth_token)
        data = bytearray()
        async with httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=True, auth=auth) as client:
            async with client.stream("GET", media.ref) as response:
                response.raise_for_status()
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise MediaTooLarge(int(declared), limit)
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > limit:
                        raise MediaTooLarge(len(data), limit)
        return bytes(data)


def record_status(db, sid: str, status: str, error: str = "") -> bool:
    """Record a Twilio status callback on the outbox row that MessageSid belongs to (never going
    back: "read" stays when a late "delivered" arrives). False when no row has that id yet."""
    with transaction(db) as session:
        row = session.exec(select(OutboxMessage).where(OutboxMessage.channel == CHANNEL,
                                                       OutboxMessage.provider_id == sid,
                                                       OutboxMessage.provider_id != "")).first()  # the partial index
        if row is None:
            return False
        if STATUS_RANK.get(status, 0) >= STATUS_RANK.get(row.delivery_status, 0):
            row.delivery_status = status
            if error:
                row.delivery_error = error
            session.add(row)
        return True


# ---------------------------------------------------------------- wiring
def add_whatsapp(app) -> None:
    """The WhatsApp channel, when its settings are present (bot/features.py's CHANNELS)."""
    settings = app.settings
    if not settings.whatsapp_enabled or CHANNEL in app.channels:
        return
    if not settings.public_base_url:
        raise ChannelSetupError("invalid setting PUBLIC_BASE_URL: WhatsApp needs the server's public URL "
                            "(Twilio signs its webhooks against it and fetches files from it)")
    app.add_channel(WhatsAppChannel(app))


async def clean_files(channel: "WhatsAppChannel") -> None:
    """The files published for Twilio to fetch expire (the scheduler's "whatsapp_files" job)."""
    removed = await asyncio.to_thread(channel.files.clean)
    if removed:
        log.info("removed %d expired WhatsApp files", removed)

__all__: Iterable[str] = ["WhatsAppChannel", "WhatsAppSender", "OutboundFiles", "to_inbound", "render",
                          "split_body", "send_error", "record_status", "add_whatsapp", "clean_files", "normalize_address"]
