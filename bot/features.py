"""The one wiring place: every feature of Katılım, in order, with what it brings (its routers'
states, commands, menu items, buttons, data rights and consent hooks; its scheduler jobs; its HTTP
routes; its `katilim` subcommands), and the channels. `bot/app.py` builds the registry from
FEATURES at start-up (Registry.build: a duplicate or a misspelt state stops `katilim run` with one
line), `bot/scheduler.py`, `bot/http.py` and `bot/cli.py` read the jobs, routes and commands from
here. Nothing registers itself at import: a feature is on when it is listed.

The order matters where the residents see it: the command menu and /yardim list the commands in
this order, and a feature's data is exported and erased in this order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

from bot import broadcasts as broadcast_jobs
from bot import (
    cli_apikey,
    cli_broadcast,
    cli_core,
    cli_events,
    cli_reports,
    cli_volunteer,
    cli_worker,
    dispatcher,
    participation_jobs,
    report_jobs,
    scheduler,
)
from conversations import (
    audiences,
    broadcast,
    core,
    events,
    linking,
    panel_link,
    participation_data,
    reminders,
    reports,
    staff_reports,
    volunteer,
)
from conversations.registry import Registry, Router

if TYPE_CHECKING:
    from bot.app import App
    from bot.scheduler import Job

JobFactory = Callable[["App"], "Job | None"]          # a named periodic job (None: not in this process)
HttpRoutes = Callable[["App", Any], None]             # (app, the FastAPI app): adds routes
CliCommands = Callable[[Any], None]                   # (argparse subparsers): adds `katilim` subcommands


@dataclass(frozen=True)
class Feature:
    name: str
    routers: tuple[Router, ...] = ()
    jobs: tuple[JobFactory, ...] = ()
    http: tuple[HttpRoutes, ...] = ()
    cli: tuple[CliCommands, ...] = ()


@dataclass(frozen=True)
class ChannelSpec:
    """A channel adapter: `add(app)` adds the channel when its settings are present; its `jobs`
    run in processes that have it."""

    name: str
    add: Callable[["App"], None]
    jobs: tuple[JobFactory, ...] = ()


def open311_routes(app: "App", http_app: Any) -> None:
    from handlers.open311 import install  # FastAPI routers: only for the HTTP server

    install(app, http_app)


def panel_routes(app: "App", http_app: Any) -> None:
    from handlers.panel import mount  # the staff console under /panel: only for the HTTP server

    mount(app, http_app)


FEATURES: tuple[Feature, ...] = (
    Feature("core", routers=(core.router,),
            jobs=(scheduler.housekeeping, scheduler.inbox, dispatcher.outbox_job),
            cli=(cli_core.register, cli_worker.register)),
    Feature("linking", routers=(linking.router,)),
    Feature("reports", routers=(reports.router, staff_reports.router), jobs=(report_jobs.overdue_summary_job,),
            cli=(cli_reports.register,)),
    Feature("open311", http=(open311_routes,), cli=(cli_apikey.register,)),
    Feature("broadcasts", routers=(broadcast.router,), jobs=(broadcast_jobs.broadcasts_job,),
            cli=(cli_broadcast.register,)),
    Feature("participation", routers=(participation_data.router, reminders.router),
            jobs=(participation_jobs.reminders_job,)),
    Feature("events", routers=(events.router,), jobs=(participation_jobs.feedback_job,), cli=(cli_events.register,)),
    Feature("volunteering", routers=(volunteer.router,), cli=(cli_volunteer.register,)),
    Feature("console", routers=(panel_link.router,), http=(panel_routes,)),
)


def add_telegram(app: "App") -> None:
    if app.settings.telegram_enabled and "telegram" not in app.channels:
        from handlers.telegram import TelegramChannel

        app.add_channel(TelegramChannel(app))


def add_whatsapp(app: "App") -> None:
    if app.settings.whatsapp_enabled:
        from handlers.whatsapp import add_whatsapp as add

        add(app)


def whatsapp_files(app: "App") -> "Job | None":
    if "whatsapp" not in app.channels:
        return None
    from bot.scheduler import Job
    from handlers.whatsapp import clean_files

    channel = app.channels["whatsapp"]

    async def run(app=app) -> None:
        await clean_files(channel)

    return Job("whatsapp_files", 3600, run)


CHANNELS: tuple[ChannelSpec, ...] = (
    ChannelSpec("telegram", add_telegram),
    ChannelSpec("whatsapp", add_whatsapp, jobs=(whatsapp_files,)),
)


# Broadcasts can target volunteer pools, a call's volunteers, an event's attendees or waiting list.
audiences.register_audiences()


def routers(features: Iterable[Feature] = FEATURES) -> tuple[Router, ...]:
    return tuple(router for feature in features for router in feature.routers)


def build_registry(features: Iterable[Feature] = FEATURES) -> Registry:
    """The registry of these features' routers (RegistryError when they do not fit together)."""
    return Registry.build(routers(features))
