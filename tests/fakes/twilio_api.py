"""A fake Twilio REST API for tests.

``FakeTwilioServer`` runs a small Starlette app under uvicorn in a background thread on 127.0.0.1
and answers what the *real* twilio-python ``Client`` calls to send WhatsApp messages::

    with FakeTwilioServer() as tw:
        client = Client(tw.account_sid, tw.auth_token)
        client.api.base_url = tw.root
        client.messages.create(from_="whatsapp:+90...", to="whatsapp:+90...", body="Merhaba")
        assert tw.messages[0].body == "Merhaba"

- ``POST /2010-04-01/Accounts/{sid}/Messages.json`` (HTTP basic auth with the account SID and
  auth token) records a ``SentMessage`` and answers Twilio-shaped JSON with a ``SM...`` sid.
  Media URLs in the message are fetched like Twilio does (``fetch_media``), so tests see what a
  signed file link served. A body over 1600 characters is refused (21617), as Twilio does.
- ``GET /2010-04-01/Accounts/{sid}/Messages/{MM}/Media/{ME}`` serves files added with
  ``add_media`` (basic auth required), as a resident's photo or voice note would be.
- Faults: ``fail_next(code)`` makes the next sends answer a Twilio error: 63016 (outside the
  24-hour window), 21610 (the resident sent STOP), 63018 (rate, as HTTP 429), 20429 (429),
  500 (server error), or any code with its own HTTP status.
- ``inbound(...)`` builds the parameters of an incoming-message webhook and ``status(...)`` those
  of a status callback; ``signature(token, url, params)`` signs them as Twilio does.
"""
from __future__ import annotations

import base64
import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from tests.fakes.base import LocalServer

__all__ = ["FakeTwilioServer", "SentMessage", "signature"]

BODY_LIMIT = 1600  # characters of a body, counted here in UTF-16 code units (the stricter reading)
ERRORS = {
    63016: (400, "Failed to send freeform message because you are outside the allowed window. "
                 "If you are using WhatsApp, please use a Message Template."),
    21610: (400, "Attempt to send to unsubscribed recipient"),
    63018: (429, "Rate limit exceeded for Channel"),
    20429: (429, "Too Many Requests"),
    21211: (400, "Invalid 'To' Phone Number"),
    21619: (400, "A text message body or media url must be specified."),
    21617: (400, "The concatenated message body exceeds the 1600 character limit."),
    20003: (401, "Authenticate"),
    20500: (500, "Internal Server Error"),
}


def signature(auth_token: str, url: str, params: dict[str, Any]) -> str:
    """X-Twilio-Signature of a webhook request (what Twilio computes)."""
    return RequestValidator(auth_token).compute_signature(url, params)


@dataclass
class SentMessage:
    """One recorded Messages.json call."""

    params: dict[str, Any]            # single values; MediaUrl and PersistentAction are lists
    time: float
    status: int = 0
    response: Any = None
    fetched: list[dict[str, Any]] = field(default_factory=list)  # media fetched: url, status, type, content

    @property
    def ok(self) -> bool:
        return self.status == 201

    @property
    def sid(self) -> str:
        return (self.response or {}).get("sid", "") if self.ok else ""

    @property
    def to(self) -> str:
        return self.params.get("To", "")

    @property
    def body(self) -> str:
        return self.params.get("Body", "")

    @property
    def media_urls(self) -> list[str]:
        return list(self.params.get("MediaUrl", []))

    @property
    def content_sid(self) -> str:
        return self.params.get("ContentSid", "")

    @property
    def content_variables(self) -> str:
        return self.params.get("ContentVariables", "")


class FakeTwilioServer(LocalServer):
    """A local, thread-safe fake of Twilio's Messages API (see the module docstring)."""

    name = "fake-twilio"

    def __init__(self, account_sid: str | None = None, auth_token: str = "test-auth-token",
                 fetch_media: bool = True) -> None:
        super().__init__()
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token
        self.fetch_media = fetch_media
        self._lock = threading.RLock()
        self.calls: list[SentMessage] = []          # every Messages.json call, any outcome
        self.media_requests: list[tuple[str, int]] = []  # (path, status) of media downloads
        self._fail: list[int] = []
        self._media: dict[str, tuple[bytes, str]] = {}
        self._ids = itertools.count(1)

    def dump(self) -> str:
        return f"sent: {self.bodies()[-10:]}"

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.media_requests.clear()
            self._fail.clear()

    # ------------------------------------------------------------------ faults and files
    def fail_next(self, code: int, n: int = 1) -> None:
        """The next ``n`` sends answer Twilio error ``code`` (with its HTTP status, see ERRORS;
        a code of 500-599 is an HTTP status with a generic body)."""
        with self._lock:
            self._fail.extend([code] * n)

    def add_media(self, content: bytes, content_type: str = "image/jpeg") -> str:
        """A file a resident sent: returns its MediaUrl (needs the account's basic auth)."""
        with self._lock:
            n = next(self._ids)
            message, media = f"MM{n:032x}", f"ME{n:032x}"
            path = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{message}/Media/{media}"
            self._media[path] = (bytes(content), content_type)
        return self.root + path

    # ------------------------------------------------------------------ recording helpers
    @property
    def messages(self) -> list[SentMessage]:
        """Accepted sends, in order."""
        with self._lock:
            return [c for c in self.calls if c.ok]

    def sent_to(self, to: str) -> list[SentMessage]:
        return [m for m in self.messages if m.to == to]

    def bodies(self, to: str | None = None) -> list[str]:
        return [m.body for m in self.messages if to is None or m.to == to]

    # ------------------------------------------------------------------ webhook parameters
    def inbound(self, from_: str, body: str = "", *, to: str = "whatsapp:+905550000000",
                profile_name: str = "Ayşe", message_sid: str | None = None, **extra: Any) -> dict[str, str]:
        """The form Twilio posts to the incoming-message webhook for a WhatsApp message."""
        number = from_.removeprefix("whatsapp:")
        sid = message_sid or "SM" + secrets.token_hex(16)
        params = {"SmsMessageSid": sid, "MessageSid": sid, "SmsSid": sid, "AccountSid": self.account_sid,
                  "MessagingServiceSid": "", "From": f"whatsapp:{number}", "To": to, "Body": body,
                  "NumMedia": "0", "NumSegments": "1", "SmsStatus": "received", "ApiVersion": "2010-04-01",
                  "ProfileName": profile_name, "WaId": number.lstrip("+"), "MessageType": "text",
                  "ReferralNumMedia": "0"}
        params.update({k: str(v) for k, v in extra.items()})
        return params

    def status(self, message_sid: str, status: str, *, to: str = "", error_code: str = "",
               error_message: str = "") -> dict[str, str]:
        """The form of a status callback for a message we sent."""
        params = {"MessageSid": message_sid, "SmsSid": message_sid, "AccountSid": self.account_sid,
                  "MessageStatus": status, "SmsStatus": status, "To": to, "From": "whatsapp:+905550000000",
                  "ApiVersion": "2010-04-01", "ChannelPrefix": "whatsapp"}
        if error_code:
            params["ErrorCode"] = error_code
        if error_message:
            params["ErrorMessage"] = error_message
        return params

    # ------------------------------------------------------------------ HTTP layer
    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user == self.account_sid and password == self.auth_token

    @staticmethod
    def _error(code: int, status: int | None = None, message: str | None = None) -> JSONResponse:
        http_status, text = ERRORS.get(code, (status or 400, message or "Error"))
        return JSONResponse({"code": code, "message": message or text,
                             "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": http_status},
                            status_code=http_status)

    async def _messages(self, request: Request) -> Response:
        body = (await request.body()).decode("utf-8")
        params: dict[str, Any] = {}
        for key, value in parse_qsl(body, keep_blank_values=True):
            if key in ("MediaUrl", "PersistentAction"):
                params.setdefault(key, []).append(value)
            else:
                params[key] = value
        call = SentMessage(params=params, time=time.monotonic())
        with self._lock:
            self.calls.append(call)
        response = await self._answer(request, params, call)
        with self._lock:
            call.status = response.status_code
            call.response = json.loads(response.body) if response.body else None
        return response

    async def _answer(self, request: Request, params: dict[str, Any], call: SentMessage) -> Response:
        if request.path_params["sid"] != self.account_sid or not self._authorized(request):
            return self._error(20003)
        with self._lock:
            fail = self._fail.pop(0) if self._fail else None
        if fail is not None:
            if 500 <= fail < 600:
                return JSONResponse({"code": fail, "message": "Internal Server Error", "status": fail},
                                    status_code=fail)
            return self._error(fail)
        to = params.get("To", "")
        if not to.startswith("whatsapp:+") or not params.get("From", "").startswith("whatsapp:+"):
            return self._error(21211)
        if not (params.get("Body") or params.get("MediaUrl") or params.get("ContentSid")):
            return self._error(21619)
        if len(params.get("Body", "").encode("utf-16-le")) // 2 > BODY_LIMIT:
            return self._error(21617)
        if self.fetch_media:
            async with httpx.AsyncClient(timeout=10) as client:
                for url in params.get("MediaUrl", []):
                    try:
                        got = await client.get(url)
                        call.fetched.append({"url": url, "status": got.status_code,
                                             "content_type": got.headers.get("content-type", ""),
                                             "disposition": got.headers.get("content-disposition", ""),
                                             "headers": dict(got.headers), "content": got.content})
                    except httpx.HTTPError as exc:
                        call.fetched.append({"url": url, "status": 0, "error": repr(exc), "content": b""})
        sid = "SM" + secrets.token_hex(16)
        now = format_datetime(datetime.now(timezone.utc), usegmt=True)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json"
        return JSONResponse({
            "account_sid": self.account_sid, "api_version": "2010-04-01", "body": params.get("Body", ""),
            "date_created": now, "date_sent": None, "date_updated": now, "direction": "outbound-api",
            "error_code": None, "error_message": None, "from": params.get("From"),
            "messaging_service_sid": None, "num_media": str(len(params.get("MediaUrl", []))),
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid, "status": "queued",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")}, "to": to, "uri": uri,
        }, status_code=201)

    async def _media_file(self, request: Request) -> Response:
        path = request.url.path
        if not self._authorized(request):
            with self._lock:
                self.media_requests.append((path, 401))
            return self._error(20003)
        with self._lock:
            found = self._media.get(path)
            self.media_requests.append((path, 200 if found else 404))
        if found is None:
            return self._error(20404, 404, "The requested resource was not found")
        content, content_type = found
        return Response(content, media_type=content_type)

    def _build_app(self) -> Starlette:
        return Starlette(routes=[
            Route("/2010-04-01/Accounts/{sid}/Messages.json", self._messages, methods=["POST"]),
            Route("/2010-04-01/Accounts/{sid}/Messages/{message}/Media/{media}", self._media_file, methods=["GET"]),
        ])
