"""The one Settings object: environment variables and `.env`, validated at start-up."""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Channels
    telegram_bot_token: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    telegram_webhook_url: str = ""
    telegram_webhook_secret: str = ""

    # Storage and content
    database_url: str = "sqlite:///katilim.db"
    katilim_catalog: Path = SAMPLE_CATALOG
    media_dir: Path = Path("media")
    media_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)  # largest photo/voice/file downloaded
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

    # Conversations
    session_expiry: timedelta = timedelta(hours=24)
    max_text_length: int = Field(default=2000, ge=10, le=100_000)
    privacy_notice_version: str = "2026-11"

    # Outbox and scheduler
    outbox_poll_interval: float = Field(default=0.5, gt=0, le=60)

    log_level: str = "INFO"

    @field_validator("katilim_catalog", mode="before")
    @classmethod
    def _catalog(cls, value):
        return SAMPLE_CATALOG if value in (None, "") else value

    @field_validator("session_expiry", mode="before")
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
