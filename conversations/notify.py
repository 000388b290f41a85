"""Every message the bot sends on its own (not a reply): its words, in the reader's language.

Storage persists and tells who is concerned; this module composes what they read (from the
catalogs) and queues it through the outbox in the caller's transaction. The domain operations
(conversations/domain/) call it after a change: a report's new status, a merge, a reopening,
a broadcast's notices; the chat flows call it for reminders and invitations.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from babel.numbers import format_decimal
from sqlmodel import Session

from conversations.i18n import N_, Translator, format_when, translator
from conversations.messages import Choice, Outbound
from storage import outbox
from storage import reports as rp

# ---------------------------------------------------------------- any resident
Build = Callable[[Translator, str], Outbound]


def notify_resident(db: Session, resident_id: int, build: Build, *, kind: str = "notification",
                    priority: int = outbox.PRIORITY_NOTIFICATION, tz: str = "Europe/Istanbul",
                    broadcast_id: int | None = None, available_at: datetime | None = None) -> int:
    """Queue a message to a resident in their own language; 0 when they cannot be reached."""
    reached = outbox.reachable_many(db, [resident_id]).get(resident_id)
    if reached is None:
        return 0
    channel, address, lang = reached
    outbox.enqueue(db, channel, address, build(translator(lang), lang), resident_id=resident_id, kind=kind,
                   priority=priority, broadcast_id=broadcast_id, available_at=available_at)
    return 1


def notify_residents(db: Session, items: list[tuple[int, Build]], *, kind: str = "notification",
                     priority: int = outbox.PRIORITY_NOTIFICATION, tz: str = "Europe/Istanbul") -> set[int]:
    """notify_resident for many residents in a fixed number of queries; the ids reached."""
    reached = outbox.reachable_many(db, {rid for rid, _ in items})
    now = outbox.utcnow()
    values = []
    for rid, build in items:
        if rid not in reached:
            continue
        channel, address, lang = reached[rid]
        values.append(outbox.pending_row(channel, address, rid, build(translator(lang), lang).to_dict(), kind=kind,
                                         priority=priority, now=now))
    if values:
        outbox.insert_rows(db, values)
    return {v["resident_id"] for v in values}


# ---------------------------------------------------------------- reports
STATUS_KEYS = {"new": N_("report.status.new"), "seen": N_("report.status.seen"),
               "in_progress": N_("report.status.in_progress"), "resolved": N_("report.status.resolved"),
               "rejected": N_("report.status.rejected"), "merged": N_("report.status.merged")}
# The notification each status change sends to the reporter and the followers.
NOTIFY_KEYS = {"new": N_("report.notify.new"), "seen": N_("report.notify.seen"),
               "in_progress": N_("report.notify.in_progress"), "resolved": N_("report.notify.resolved"),
               "rejected": N_("report.notify.rejected"), "merged": N_("report.notify.merged")}
# Prefix of the proactive "was it solved?" buttons: rs:yes:CODE / rs:no:CODE; rating rr:N:CODE.
RESOLVED_PREFIX = "rs"
RATING_PREFIX = "rr"
# The channel staff notices go to (a staff record's telegram_id).
STAFF_CHANNEL = "telegram"


def category_name(catalog, key: str, lang: str) -> str:
    if catalog is not None:
        cat = catalog.category(key)
        if cat is not None:
            return cat.name.get(lang)
    return key


def status_notification(t: Translator, lang: str, report: rp.Report, *, note: str = "", catalog=None,
                        into_code: str = "") -> Outbound:
    """The message a status change sends (in the resident's language)."""
    lines = [t(NOTIFY_KEYS[report.status], code=report.code, category=category_name(catalog, report.category, lang),
               into=into_code)]
    if report.status == "rejected" and report.reject_reason:
        lines.append(t("report.notify.reason", reason=report.reject_reason))
    elif note:
        lines.append(t("report.notify.note", note=note))
    choices = []
    if report.status == "resolved":
        lines.append(t("report.notify.resolved_question"))
        choices = [Choice(f"{RESOLVED_PREFIX}:yes:{report.code}", t("report.notify.resolved_yes")),
                   Choice(f"{RESOLVED_PREFIX}:no:{report.code}", t("report.notify.resolved_no"))]
    return Outbound(text="\n".join(lines), choices=choices)


def report_changed(db: Session, report: rp.Report, people: list[int], *, note: str = "", catalog=None,
                   into_code: str = "", tz: str = "Europe/Istanbul") -> int:
    """Tell these residents (rp.to_be_told) of the report's new status; how many were reached."""
    sent = 0
    for resident_id in people:
        sent += notify_resident(db, resident_id, lambda t, lang: status_notification(
            t, lang, report, note=note, catalog=catalog, into_code=into_code), kind="notification", tz=tz)
    return sent


def notify_staff(db: Session, build: Callable[[Translator], Outbound]) -> int:
    """A message to every staff member with a Telegram id (in their resident language if they
    also use the bot as a resident, else Turkish), through the outbox."""
    count = 0
    for address, resident in rp.staff_recipients(db, STAFF_CHANNEL):
        lang = resident.locale if resident else "tr"
        outbox.enqueue(db, STAFF_CHANNEL, address, build(translator(lang)),
                       resident_id=resident.id if resident else None, kind="notification")
        count += 1
    return count


def report_reopened(db: Session, report: rp.Report) -> int:
    return notify_staff(db, lambda t: Outbound(text=t("report.staff.reopened", code=report.code,
                                                      count=report.reopened_count)))


# ---------------------------------------------------------------- the daily overdue summary (staff)
def mahalle_name(catalog, key: str | None) -> str:
    hood = catalog.neighbourhood(key) if catalog is not None and key else None
    return hood.name if hood else (key or "—")


def overdue_summary(t: Translator, lang: str, total: int, shown: list[rp.Report], *, catalog=None,
                    tz: str = "Europe/Istanbul", console_url: str = "") -> Outbound:
    """A staff member's daily summary: how many of their reports are overdue, the longest overdue
    (code · category · mahalle · since when), and where to see them all: the chat's /raporlar
    and, when the console has a public address, its list filtered on overdue."""
    lines = [t.n("staffreport.overdue_summary", total)]
    lines += [t("staffreport.overdue_line", code=r.code, category=category_name(catalog, r.category, lang),
                mahalle=mahalle_name(catalog, r.mahalle), since=format_when(r.due_at, lang, tz)) for r in shown]
    if total > len(shown):
        lines.append(t.n("staffreport.overdue_more", total - len(shown)))
    lines.append(t("staffreport.overdue_hint", button=t("staffreport.overdue")))
    if console_url:
        lines.append(t("staffreport.overdue_console", url=console_url))
    return Outbound(text="\n".join(lines), link_preview=False)


# ---------------------------------------------------------------- broadcasts
def number(n: int, lang: str) -> str:
    return format_decimal(n, locale=lang)


def render_broadcast(texts: dict[str, str], photo_path: str, lang: str) -> Outbound:
    """The message a resident reading `lang` gets (the preview shows exactly this)."""
    t = translator(lang)
    body = (texts.get(lang) or texts.get("tr") or "").strip()
    return Outbound(text=f"{t('broadcast.header')}\n\n{body}\n\n{t('broadcast.footer')}", photo_path=photo_path or "")


# the notices' parameters that are counts (written in the reader's locale: 12.345); ids and percents stay plain
COUNTS = frozenset({"withdrawn", "sent", "failed", "waiting", "total"})
NOTICE_KEYS = {"cancelled": N_("broadcast.notice_cancelled"), "started": N_("broadcast.notice_started"),
               "done": N_("broadcast.notice_done"), "progress": N_("broadcast.notice_progress")}


class BroadcastWords:
    """storage.broadcasts.Composer: the words of a broadcast and of its notices to the staff member
    (numbers in the reader's locale, times in the municipality's time zone)."""

    def __init__(self, tz: str = "Europe/Istanbul") -> None:
        self.tz = tz

    def message(self, texts: dict[str, str], photo_path: str, lang: str) -> dict[str, Any]:
        return render_broadcast(texts, photo_path, lang).to_dict()

    def notice(self, event: str, lang: str, **params: Any) -> dict[str, Any]:
        words = {k: number(v, lang) if k in COUNTS else format_when(v, lang, self.tz) if isinstance(v, datetime)
                 else v for k, v in params.items()}
        return Outbound(text=translator(lang)(NOTICE_KEYS[event], **words)).to_dict()


# the catalog keys storage's errors carry (storage.reports.ReportError.key)
N_("report.error.unknown_code"), N_("report.error.bad_status"), N_("report.error.merged")
N_("report.error.merge_self"), N_("report.error.bad_rating"), N_("report.error.rate_not_resolved")
