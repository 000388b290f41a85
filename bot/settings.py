"""The one Settings object: environment variables and `.env`, validated at start-up."""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SAMPLE_CATALOG = Path(__file__).parent / "catalogs" / "buca.toml"
SUPPORTED_LOCALES = ("tr", "en", "ar")


class SettingsError(Exception):
    """A setting is invalid; the message is one line naming it."""


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """'90s', '15m', '24h', '7d' or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    text = str(value).strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        number, unit = text[:-1], units[text[-1]]
    else:
        number, unit = text, 1
    try:
        seconds = float(number) * unit
    except ValueError:
        raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 15m, 24h, 7d)") from None
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return timedelta(seconds=seconds)


def duration_at_least(value, minimum: timedelta) -> timedelta:
    """parse_duration, refusing less than `minimum` ("must be at least 1s" / "1m")."""
    duration = parse_duration(value)
    if duration < minimum:
        seconds = minimum.total_seconds()
        raise ValueError(f"must be at least {seconds / 60:g}m" if seconds >= 60 else f"must be at least {seconds:g}s")
    return duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Channels
    telegram_bot_token: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    telegram_webhook_url: str = ""
    telegram_webhook_secret: str = ""
    # WhatsApp through Twilio (handlers/whatsapp.py): on when the account SID, the auth token and the
    # sending number are all set; Twilio signs its webhooks against PUBLIC_BASE_URL.
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_whatsapp_from: str = Field(default="", validate_default=True)  # whatsapp:+90...
    twilio_api_url: str = "https://api.twilio.com"
    # Approved WhatsApp templates (content SIDs, HX...) for proactive messages outside the 24-hour
    # window, per outbox kind; a kind without one is not sent outside the window (unsendable).
    twilio_template_notification: str = ""
    twilio_template_reminder: str = ""
    twilio_template_broadcast: str = ""

    @field_validator("twilio_account_sid")
    @classmethod
    def _twilio_sid(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"AC[0-9a-fA-F]{32}", value):
            raise ValueError("must be AC followed by 32 hexadecimal characters (Twilio console)")
        return value

    @field_validator("twilio_whatsapp_from")
    @classmethod
    def _twilio_from(cls, value: str, info: ValidationInfo) -> str:
        value = re.sub(r"[\s().-]", "", value or "").removeprefix("whatsapp:")
        if value and not re.fullmatch(r"\+[1-9]\d{6,14}", value):
            raise ValueError("must be a WhatsApp number in international form, e.g. whatsapp:+905551234567")
        given = [bool(info.data.get("twilio_account_sid")), bool(info.data.get("twilio_auth_token")), bool(value)]
        if any(given) and not all(given):
            raise ValueError("set TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and TWILIO_WHATSAPP_FROM together")
        return f"whatsapp:{value}" if value else ""

    @field_validator("twilio_api_url")
    @classmethod
    def _twilio_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("twilio_template_notification", "twilio_template_reminder", "twilio_template_broadcast")
    @classmethod
    def _twilio_template(cls, value: str) -> str:
        value = value.strip()
        if value and not re.fullmatch(r"HX[0-9a-fA-F]{32}", value):
            raise ValueError("must be a content SID: HX followed by 32 hexadecimal characters")
        return value

    # Storage and content
    database_url: str = "sqlite:///katilim.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    katilim_catalog: Path = SAMPLE_CATALOG
    media_dir: Path = Path("media")
    media_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # largest photo/voice/file downloaded
    # A photo with more pixels is refused before it is decoded (a decompression bomb: a few hundred
    # KB of PNG that would take gigabytes); Pillow's Image.MAX_IMAGE_PIXELS follows it.
    media_max_pixels: int = Field(default=40_000_000, ge=1_000_000, le=500_000_000)
    media_jpeg_quality: int = Field(default=85, ge=50, le=95)  # photos are re-encoded (JPEG, WebP) at this quality
    default_locale: str = "tr"
    timezone: str = "Europe/Istanbul"

    # HTTP server (health, webhooks, APIs)
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    # Public root URL of this server (https://katilim.example.org): links in Open311 media_url,
    # WhatsApp media. Empty: relative links.
    public_base_url: str = ""

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    # development or production. Production turns off the API documentation (/docs, /openapi.json)
    # unless HTTP_DOCS=on.
    katilim_env: Literal["development", "production"] = "development"
    # /docs and /openapi.json: on, off, or auto (on in development, off in production).
    http_docs: Literal["on", "off", "auto"] = "auto"
    # Limits on every request (bot/http.py): a request's headers, and then its body, must arrive
    # within HTTP_READ_TIMEOUT (a slow or stalled client gets 408 or is disconnected); at most
    # HTTP_MAX_CONNECTIONS open connections (beyond: 503); an idle keep-alive connection is
    # closed after HTTP_KEEP_ALIVE_TIMEOUT.
    http_read_timeout: timedelta = timedelta(seconds=15)
    http_max_connections: int = Field(default=200, ge=2, le=100_000)
    http_keep_alive_timeout: timedelta = timedelta(seconds=5)

    @field_validator("katilim_env", "http_docs", mode="before")
    @classmethod
    def _lower(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("http_read_timeout", "http_keep_alive_timeout", mode="before")
    @classmethod
    def _http_duration(cls, value):
        duration = parse_duration(value)
        if duration < timedelta(seconds=1) or duration > timedelta(hours=1):
            raise ValueError("must be between 1s and 1h")
        return duration

    # The staff console (/panel, handlers/panel/): a session ends after PANEL_IDLE_TIMEOUT without a
    # request, and PANEL_SESSION_LIFETIME after sign-in whatever happens; PANEL_REQUIRE_TOTP=on makes
    # every admin enrol and use a second factor (TOTP) before anything else.
    panel_idle_timeout: timedelta = timedelta(minutes=30)
    panel_session_lifetime: timedelta = timedelta(hours=12)
    panel_require_totp: bool = False
    # The console's map (/panel/map): the tile server ({z}/{x}/{y}; its host is allowed in the
    # console's Content-Security-Policy) and the attribution its licence asks for. Without a
    # reachable tile server the map still shows its pins, clusters and filters.
    panel_tile_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    panel_tile_attribution: str = "© OpenStreetMap contributors"
    # The daily overdue summary (conversations/overdue.py, the "overdue_summary" job): from this
    # local hour (0-23, the municipality's time zone) each staff member gets one message a day
    # listing the overdue reports of their departments.
    overdue_summary_hour: int = Field(default=8, ge=0, le=23)

    @field_validator("panel_tile_url")
    @classmethod
    def _tile_url(cls, value: str) -> str:
        value = (value or "").strip()
        if value and not (value.startswith(("https://", "http://")) and "{z}" in value and "{x}" in value
                          and "{y}" in value):
            raise ValueError("expected an http(s) URL with {z}, {x} and {y}, or nothing (no tiles)")
        return value

    @field_validator("panel_idle_timeout", "panel_session_lifetime", mode="before")
    @classmethod
    def _panel_duration(cls, value):
        duration = duration_at_least(value, timedelta(minutes=1))
        if duration > timedelta(days=7):
            raise ValueError("must be at most 7d")
        return duration

    # Open311 POST requests.json budgets (handlers/open311.py, kept in the database and shared by every
    # worker): per API key, OPEN311_POSTS_PER_MINUTE with bursts of OPEN311_POSTS_BURST; across
    # all keys together, OPEN311_POSTS_PER_MINUTE_TOTAL with bursts of OPEN311_POSTS_BURST_TOTAL.
    # Beyond: 429 with Retry-After. 0 per minute: no limit.
    open311_posts_per_minute: float = Field(default=30, ge=0, le=100_000)
    open311_posts_burst: int = Field(default=10, ge=1, le=100_000)
    open311_posts_per_minute_total: float = Field(default=120, ge=0, le=1_000_000)
    open311_posts_burst_total: int = Field(default=30, ge=1, le=1_000_000)

    # Conversations
    session_expiry: timedelta = timedelta(hours=24)
    # Delivered outbox rows (address, text) are deleted after this long (data minimisation).
    outbox_retention: timedelta = timedelta(days=30)
    max_text_length: int = Field(default=2000, ge=10, le=100_000)
    privacy_notice_version: str = "2026-11"
    # Problem reports a resident may file per hour (conversations/reports.py).
    reports_per_hour: int = Field(default=5, ge=1, le=1000)
    # Flood control (bot/flood.py): one account may send FLOOD_MESSAGES messages per FLOOD_WINDOW;
    # more are not processed and the resident is told once per window.
    flood_messages: int = Field(default=20, ge=1, le=100_000)
    flood_window: timedelta = timedelta(seconds=10)

    @field_validator("flood_window", mode="before")
    @classmethod
    def _flood_window(cls, value):
        return duration_at_least(value, timedelta(seconds=1))

    # Linking two channels with a one-time code (/bagla, conversations/linking.py): every wrong code,
    # from any resident, counts against LINK_CODE_FAILURES per LINK_CODE_WINDOW; past it, linking
    # by code pauses for everyone for LINK_CODE_PAUSE and every live code is voided.
    link_code_failures: int = Field(default=50, ge=1, le=100_000)
    link_code_window: timedelta = timedelta(hours=1)
    link_code_pause: timedelta = timedelta(hours=1)

    @field_validator("link_code_window", "link_code_pause", mode="before")
    @classmethod
    def _link_duration(cls, value):
        return duration_at_least(value, timedelta(minutes=1))

    # Outbox and scheduler
    outbox_poll_interval: float = Field(default=0.5, gt=0, le=60)
    # The dispatcher (bot/dispatcher.py): rows claimed per round, how long a claim holds, retries.
    outbox_batch_size: int = Field(default=10, ge=1, le=500)
    outbox_lease: timedelta = timedelta(seconds=30)
    outbox_max_attempts: int = Field(default=8, ge=1, le=100)
    outbox_backoff_cap: timedelta = timedelta(seconds=300)
    # Platform limits; the dispatcher paces a little under them (30/s → 29.25/s), shared by every worker.
    telegram_messages_per_second: float = Field(default=30, gt=0, le=1000)
    telegram_per_chat_per_second: float = Field(default=1, gt=0, le=100)
    telegram_per_chat_burst: int = Field(default=3, ge=1, le=100)
    twilio_messages_per_second: float = Field(default=10, gt=0, le=1000)

    @field_validator("outbox_lease", "outbox_backoff_cap", mode="before")
    @classmethod
    def _outbox_duration(cls, value):
        return duration_at_least(value, timedelta(seconds=1))

    # Volunteer pools, events and reminders (conversations/reminders.py, bot/participation_jobs.py).
    # Reminders before events and volunteer shifts, comma-separated ("24h,2h"; empty: none).
    katilim_reminder_offsets: str = "24h,2h"
    # A reminder whose time passed while the bot was down is still sent this late; older: dropped.
    reminder_grace: timedelta = timedelta(minutes=30)
    # Seconds between scans for due reminders.
    reminder_scan_interval: float = Field(default=5, gt=0, le=600)
    # The bot's username for deep links (https://t.me/<name>?start=ev_12); empty: asked with getMe.
    telegram_bot_username: str = ""

    @field_validator("katilim_reminder_offsets")
    @classmethod
    def _reminder_offsets(cls, value: str) -> str:
        for part in str(value).split(","):
            if part.strip() and parse_duration(part) <= timedelta(0):
                raise ValueError("every offset must be longer than 0 (e.g. 24h,2h)")
        return str(value)

    @field_validator("reminder_grace", mode="before")
    @classmethod
    def _reminder_grace(cls, value):
        return parse_duration(value)

    @field_validator("telegram_bot_username")
    @classmethod
    def _bot_username(cls, value: str) -> str:
        return value.strip().removeprefix("@")

    @property
    def reminder_offsets(self) -> list[timedelta]:
        """KATILIM_REMINDER_OFFSETS parsed, longest first, without duplicates."""
        found = {parse_duration(part) for part in self.katilim_reminder_offsets.split(",") if part.strip()}
        return sorted(found, reverse=True)

    log_level: str = "INFO"

    @field_validator("katilim_catalog", mode="before")
    @classmethod
    def _catalog(cls, value):
        return SAMPLE_CATALOG if value in (None, "") else value

    @field_validator("session_expiry", "outbox_retention", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value)

    @field_validator("default_locale")
    @classmethod
    def _locale(cls, value: str) -> str:
        if value not in SUPPORTED_LOCALES:
            raise ValueError(f"must be one of {', '.join(SUPPORTED_LOCALES)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("database_url")
    @classmethod
    def _db(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql")):
            raise ValueError("must start with sqlite:/// or postgresql+psycopg://")
        if value.startswith("postgresql://"):
            value = "postgresql+psycopg://" + value[len("postgresql://"):]
        return value

    @field_validator("telegram_api_url", "telegram_webhook_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def telegram_enabled(self) -> bool:
        return bool(self.telegram_bot_token)

    @property
    def whatsapp_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_whatsapp_from)

    @property
    def docs_enabled(self) -> bool:
        """/docs and /openapi.json are served (HTTP_DOCS, else KATILIM_ENV)."""
        if self.http_docs == "auto":
            return self.katilim_env == "development"
        return self.http_docs == "on"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides) -> Settings:
    """Build Settings; any invalid value raises SettingsError with one line naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]).upper() if err.get("loc") else "?"
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        raise SettingsError(f"invalid setting {name}: {msg}") from None
