"""`katilim worker`: a dispatcher-only process. It builds the application, adds every configured
channel's sender without starting the channel's inbound side (no polling, no webhook, no HTTP
server, no scheduler) and delivers the outbox until SIGTERM or SIGINT. Run several of them on
PostgreSQL to scale out; on SQLite only one dispatcher may run (this one exits with status 3 and
says so when another `katilim run` or `katilim worker` is live on the same file)."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from bot.app import add_configured_channels, build_app
from bot.dispatcher import Dispatcher
from bot.pacing import unpaced
from bot.settings import Settings
from conversations.i18n import t_in

log = logging.getLogger("katilim")

EXIT_REFUSED = 3


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="deliver the outbox only (no inbound); run several on PostgreSQL to scale out")
    p.set_defaults(func=cmd_worker)


async def cmd_worker(settings: Settings, args) -> int:
    app = build_app(settings, features=args.features, role="worker")
    add_configured_channels(app)  # constructs the channels; their start() (inbound) is never called
    lang = settings.default_locale
    if not app.senders:
        print(t_in(lang, "dispatcher.no_channel"), file=sys.stderr)
        app.db.dispose()
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    dispatcher = Dispatcher(app, dict(app.senders), app.worker_id, settings, role="worker")
    try:
        if not await dispatcher.start():
            print(t_in(lang, "dispatcher.sqlite_single"), file=sys.stderr)
            return EXIT_REFUSED
        log.info("katilim worker %s delivering %s", app.worker_id, ", ".join(sorted(app.senders)))
        await stop.wait()
        return 0
    finally:
        await dispatcher.stop()
        await _close_senders(app)
        app.db.dispose()


async def _close_senders(app) -> None:
    """Close what the senders opened lazily (e.g. the Telegram Bot's HTTP connections)."""
    for sender in app.senders.values():
        try:
            await asyncio.wait_for(unpaced(sender).close(), timeout=5)
        except Exception:
            log.debug("sender of %s not closed cleanly", sender.channel, exc_info=True)
