"""The `katilim` command. Each feature adds its subcommands from its own module (bot/features.py
lists them: `Feature(cli=(cli_reports.register,))`)."""
from __future__ import annotations

import argparse
import asyncio
import getpass
import logging
import sys
from typing import Iterable

from bot.app import StartupError
from bot.catalog import CatalogError
from bot.settings import Settings, SettingsError, load_settings
from conversations.text import key_for
from handlers.kit import ChannelSetupError


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=getattr(logging, settings.log_level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "httpx", "apscheduler.executors.default", "apscheduler.scheduler", "telegram.ext.Updater"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, getattr(logging, settings.log_level)))


def build_parser(features: Iterable | None = None) -> argparse.ArgumentParser:
    """The subcommands of these features (default: bot/features.py's FEATURES); a subcommand that
    builds the application builds it of the same features (`args.features`)."""
    from bot.features import FEATURES  # it lists the cli_* modules, which import this one

    features = tuple(FEATURES if features is None else features)
    parser = argparse.ArgumentParser(prog="katilim", description="Katılım: the municipality's participation chatbot")
    parser.set_defaults(features=features)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for feature in features:
        for register in feature.cli:
            register(sub)
    return parser


def main(argv: list[str] | None = None, features: Iterable | None = None) -> int:
    parser = build_parser(features)
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        configure_logging(settings)
        result = args.func(settings, args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result or 0)
    except (SettingsError, CatalogError, StartupError, ChannelSetupError) as exc:
        print(f"katilim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def catalog_key(keys: Iterable[str]):
    """An argparse `type` for an option taking one of these keys, typed Turkish-aware
    (`--type atölye` is `atolye`): anything else stays as typed, for `choices` to refuse."""
    keys = tuple(keys)

    def convert(typed: str) -> str:
        return key_for(typed, keys) or typed

    return convert


def keys_in(typed: Iterable[str] | None, keys: Iterable[str]) -> list[str] | None:
    """Typed catalog keys (repeated options) as the catalog spells them; unknown ones unchanged."""
    keys = tuple(keys)
    return None if typed is None else [key_for(t, keys) or t for t in typed]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """A count in the CLI's English: "1 resident", "2 residents"."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def operator_name() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError, ImportError):  # no login name (a container with no passwd entry)
        return "cli:unknown"


if __name__ == "__main__":
    sys.exit(main())
