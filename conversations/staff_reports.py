"""Problem reports, the staff side (issue 4): /raporlar to filter, list, open and triage reports.

Every state is staff_only: the engine refuses a non-staff account (and audits the attempt) both
when a command leads here and when an input arrives. Status changes and merges are the domain
operations of conversations/domain/reports.py (the role and department check, the audit row, the
notifications to the reporter and the followers in their language), as in the CLI and the console.
"""
from __future__ import annotations

from conversations.domain import reports as domain
from conversations.domain import triage
from conversations.i18n import N_, t_in
from conversations.messages import Attachment, Choice, Inbound, Kind
from conversations.permissions import Refused
from conversations.registry import Router
from conversations.reports import CODE_RE, category_name, location_text, mahalle_name, status_name
from conversations.step import PAGE_SIZE, Ctx, Go, Invalid, Stay, Transition
from conversations.text import match_mahalle, match_options, truncate
from storage import reports as rp
from storage.models import Staff
from storage.report_list import is_overdue

router = Router("staff_reports")
TARGETS = {"seen": N_("staffreport.to_seen"), "in_progress": N_("staffreport.to_in_progress"),
           "resolved": N_("staffreport.to_resolved"), "rejected": N_("staffreport.to_rejected")}


def _filter(ctx: Ctx) -> dict:
    return dict(ctx.data.get("f") or {})


def _set_filter(ctx: Ctx, **values) -> None:
    """Copy on write: the session's JSON column only changes when the stored value is a new object."""
    f = _filter(ctx)
    f.update(values)
    ctx.data["f"] = {k: v for k, v in f.items() if v}


def _filter_text(ctx: Ctx) -> str:
    f = _filter(ctx)
    parts = [ctx.t("staffreport.overdue")] if f.get("overdue") else []
    if f.get("status"):
        parts.append(ctx.t("staffreport.all_open") if f["status"] == "open" else status_name(ctx, f["status"]))
    if f.get("category"):
        parts.append(category_name(ctx, f["category"]))
    if f.get("mahalle"):
        parts.append(mahalle_name(ctx, f["mahalle"]))
    return ctx.t.join(parts) or ctx.t("staffreport.filter_none")


def _query_args(ctx: Ctx) -> dict:
    f = _filter(ctx)
    status = f.get("status")
    args = {"category": f.get("category"), "mahalle": f.get("mahalle")}
    if f.get("overdue"):
        args["overdue_at"] = ctx.now
    if status == "open":
        args["statuses"] = rp.OPEN_STATUSES
    elif status and status != "all":
        args["status"] = status
    return args


router.menu_item(102, "staff_reports", N_("menu.staff_reports"), "cmd:reports", staff=True)


@router.command("reports", "raporlar", "reports", menu={"tr": "raporlar", "en": "reports", "ar": "reports"},
                description=N_("command.staff_reports"), staff=True)
def cmd_reports(ctx: Ctx, text: str) -> Transition:
    found = CODE_RE.search((text or "").upper())
    if found:
        return Go("staffreport.view", {"code": found.group(1), "f": {}})
    return Go("staffreport.home", {"f": {}})


def _open_code(ctx: Ctx, text: str) -> Transition | None:
    found = CODE_RE.search(text.upper())
    if not found:
        return None
    if rp.get_by_code(ctx.db, found.group(1)) is None:
        ctx.say(ctx.t("report.unknown_code", code=found.group(1)))
        return Stay()
    ctx.data.pop("shown", None)
    return Go("staffreport.view", {"code": found.group(1)}, keep=True)


# ---------------------------------------------------------------- home: counts and filters
@router.state("staffreport.home", staff_only=True)
def staff_home(ctx: Ctx) -> None:
    f = _filter(ctx)
    scope = {"category": f.get("category"), "mahalle": f.get("mahalle")}
    counts = {s: rp.count_reports(ctx.db, status=s, **scope) for s in rp.STATUSES}
    late = rp.count_reports(ctx.db, overdue_at=ctx.now, **scope)
    choices = [Choice(f"st:{s}", f"{status_name(ctx, s)} ({counts[s]})") for s in rp.OPEN_STATUSES]
    choices += [Choice("st:open", f"{ctx.t('staffreport.all_open')} ({sum(counts[s] for s in rp.OPEN_STATUSES)})"),
                Choice("st:resolved", f"{status_name(ctx, 'resolved')} ({counts['resolved']})"),
                Choice("st:rejected", f"{status_name(ctx, 'rejected')} ({counts['rejected']})"),
                Choice("st:all", ctx.t("staffreport.all")),
                Choice("od", f"{ctx.t('staffreport.overdue')} ({late})"),
                Choice("cat", ctx.t("staffreport.by_category")), Choice("mah", ctx.t("staffreport.by_mahalle"))]
    if f.get("category") or f.get("mahalle") or f.get("overdue"):
        choices.append(Choice("clear", ctx.t("staffreport.clear")))
    ctx.ask(ctx.t("staffreport.home", filter=_filter_text(ctx), new=counts["new"], seen=counts["seen"],
                  in_progress=counts["in_progress"]), choices, columns=2)


@staff_home.on_input
def on_staff_home(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        return _open_code(ctx, msg.text) or Invalid("staffreport.home_hint")
    if msg.choice.startswith("st:"):
        _set_filter(ctx, status=msg.choice[3:], overdue=None)
        return Go("staffreport.list", {"_page": 0}, keep=True)
    if msg.choice == "od":   # open and past their due time (any status filter is replaced)
        _set_filter(ctx, status=None, overdue=1)
        return Go("staffreport.list", {"_page": 0}, keep=True)
    if msg.choice == "cat":
        return Go("staffreport.category", keep=True)
    if msg.choice == "mah":
        return Go("staffreport.mahalle", {"_page": 0}, keep=True)
    _set_filter(ctx, category=None, mahalle=None, overdue=None)
    return Go("staffreport.home", keep=True)


@router.state("staffreport.category", staff_only=True)
def staff_category(ctx: Ctx) -> None:
    choices = [Choice(f"c:{c.key}", c.name.get(ctx.lang)) for c in ctx.catalog.categories]
    ctx.ask(ctx.t("staffreport.pick_category"), choices + [Choice("any", ctx.t("staffreport.any"))], columns=2)


@staff_category.on_input
def on_staff_category(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        found = match_options(msg.text, [(c.key, c.words()) for c in ctx.catalog.categories])
        if len(found) != 1:
            return Invalid("report.category_unknown")
        key = found[0]
    else:
        key = None if msg.choice == "any" else msg.choice.removeprefix("c:")
    _set_filter(ctx, category=key)
    return Go("staffreport.home", keep=True)


@router.state("staffreport.mahalle", staff_only=True)
def staff_mahalle(ctx: Ctx) -> None:
    items = [Choice(f"m:{n.key}", n.name) for n in ctx.catalog.neighbourhoods]
    ctx.ask(ctx.t("staffreport.pick_mahalle"),
            ctx.paged(items, ctx.data.get("_page", 0), [Choice("any", ctx.t("staffreport.any"))]), columns=2)


@staff_mahalle.on_input
def on_staff_mahalle(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        found = match_mahalle(msg.text, ctx.catalog.neighbourhoods)
        if len(found) != 1:
            return Invalid("report.mahalle_unknown")
        key = found[0]
    else:
        key = None if msg.choice == "any" else msg.choice.removeprefix("m:")
    _set_filter(ctx, mahalle=key)
    ctx.data.pop("_page", None)
    return Go("staffreport.home", keep=True)


# ---------------------------------------------------------------- the list
@router.state("staffreport.list", staff_only=True)
def staff_list(ctx: Ctx) -> None:
    args = _query_args(ctx)
    total = rp.count_reports(ctx.db, **args)
    pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
    page = max(0, min(ctx.data.get("_page", 0), pages - 1))
    ctx.data["_page"] = page
    rows = rp.list_reports(ctx.db, limit=PAGE_SIZE, offset=page * PAGE_SIZE, **args)
    choices = [Choice(f"r:{r.code}", ("⏰ " if is_overdue(r, ctx.now) else "")
                      + f"{r.code} · {category_name(ctx, r.category)} · {status_name(ctx, r.status)}"
                      + (f" · {mahalle_name(ctx, r.mahalle)}" if r.mahalle else "")) for r in rows]
    if page > 0:
        choices.append(Choice("page:prev", ctx.t("engine.page_prev")))
    if page < pages - 1:
        choices.append(Choice("page:next", ctx.t("engine.page_next", page=page + 2, pages=pages)))
    choices.append(Choice("filter", ctx.t("staffreport.change_filter")))
    text = ctx.t.n("staffreport.list_title", total, filter=_filter_text(ctx)) if total \
        else ctx.t("staffreport.list_empty", filter=_filter_text(ctx))
    ctx.ask(text, choices)


@staff_list.on_input
def on_staff_list(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        return _open_code(ctx, msg.text) or Invalid("staffreport.home_hint")
    if msg.choice == "filter":
        return Go("staffreport.home", keep=True)
    ctx.data.pop("shown", None)
    return Go("staffreport.view", {"code": msg.choice.removeprefix("r:")}, keep=True)


# ---------------------------------------------------------------- one report
@router.state("staffreport.view", staff_only=True)
def staff_view(ctx: Ctx) -> None:
    report = rp.get_by_code(ctx.db, ctx.data.get("code", ""))
    if report is None:
        ctx.ask(ctx.t("report.unknown_code", code=ctx.data.get("code", "")),
                [Choice("back", ctx.t("staffreport.back"))])
        return
    if ctx.data.get("shown") != report.code:  # photos, voice and pin once; the buttons every time
        for media in rp.media_of(ctx.db, report.id):
            if media.kind == "photo":
                ctx.say(report.code, photo_path=media.path)
            else:
                ctx.say(ctx.t("staffreport.voice", code=report.code),
                        document=Attachment(filename=media.path.rsplit("/", 1)[-1] or "voice.ogg",
                                            content_type=media.content_type or "audio/ogg", data="", path=media.path))
        if report.latitude is not None and report.longitude is not None:
            ctx.say("", latitude=report.latitude, longitude=report.longitude, venue_title=report.code)
        ctx.data["shown"] = report.code
    ctx.ask(staff_text(ctx, report), _view_choices(ctx, report))


def staff_text(ctx: Ctx, report: rp.Report) -> str:
    lines = [ctx.t("staffreport.view", code=report.code, status=status_name(ctx, report.status),
                   category=category_name(ctx, report.category),
                   description=ctx.t("report.erased") if report.erased_at else truncate(report.description, 1500) or "—",
                   location=location_text(ctx, report.latitude, report.longitude, report.mahalle, report.address),
                   created=ctx.when(report.created_at), updated=ctx.when(report.updated_at),
                   supporters=report.supporters, reopened=report.reopened_count,
                   rating=report.rating if report.rating else "—")]
    lines += triage_lines(ctx, report)
    if report.reject_reason:
        lines.append(ctx.t("report.notify.reason", reason=report.reject_reason))
    if report.merged_into_id:
        target = rp.get_report(ctx.db, report.merged_into_id)
        lines.append(ctx.t("report.detail_merged", code=target.code if target else "?"))
    lines.append(ctx.t("report.detail_history"))
    events = rp.history_of(ctx.db, report.id)[-12:]
    names = triage.staff_names_for(ctx.db, events)
    for event in events:
        what = triage.event_text(ctx.t, event, report, ctx.catalog, names, lambda s: status_name(ctx, s))
        note = f" — {truncate(event.note, 160)}" if triage.shows_note(event) else ""
        lines.append(f"• {ctx.when(event.at)} · {what} · {triage.actor_name(ctx.t, event.actor, report, names)}{note}")
    return "\n".join(lines)


def triage_lines(ctx: Ctx, report: rp.Report) -> list[str]:
    """Whose it is and by when: the department, the assignee, the due time of an open report
    (marked when it has passed)."""
    dep = ctx.catalog.department(report.department) if report.department else None
    department = dep.name.get(ctx.lang) if dep else report.department or ctx.t("staffreport.no_department")
    lines = [ctx.t("staffreport.view_department", department=department)]
    if report.assignee_id is not None:
        assignee = ctx.db.get(Staff, report.assignee_id)
        name = triage.actor_name(ctx.t, f"staff:{report.assignee_id}", report,
                                 {report.assignee_id: assignee.name if assignee else ""})
    else:
        name = ctx.t("staffreport.nobody")
    lines.append(ctx.t("staffreport.view_assignee", assignee=name))
    if report.due_at is not None and report.status in rp.OPEN_STATUSES:
        key = N_("staffreport.view_overdue") if is_overdue(report, ctx.now) else N_("staffreport.view_due")
        lines.append(ctx.t(key, due=ctx.when(report.due_at)))
    return lines


def _view_choices(ctx: Ctx, report: rp.Report) -> list[Choice]:
    choices = []
    if report.status != "merged":
        for status, label in TARGETS.items():
            if status != report.status and not (status == "seen" and report.status != "new"):
                choices.append(Choice(f"to:{status}", ctx.t(label)))
        choices.append(Choice("merge", ctx.t("staffreport.merge")))
    else:
        choices.append(Choice("unmerge", ctx.t("staffreport.unmerge")))
    return choices + [Choice("back", ctx.t("staffreport.back"))]


@staff_view.on_input
def on_staff_view(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        return _open_code(ctx, msg.text) or Invalid("engine.choose")
    if msg.choice == "back":
        return Go("staffreport.list", keep=True)
    if msg.choice == "merge":
        return Go("staffreport.merge", keep=True)
    if msg.choice == "unmerge":
        return _unmerge(ctx)
    target = msg.choice.removeprefix("to:")
    ctx.data["to"] = target
    return Go("staffreport.reason" if target == "rejected" else "staffreport.note", keep=True)


@router.state("staffreport.note", staff_only=True)
def staff_note(ctx: Ctx) -> None:
    text = ctx.t("staffreport.note_prompt", code=ctx.data.get("code", ""),
                 status=status_name(ctx, ctx.data.get("to", "")))
    ctx.ask(text + "\n" + _languages_line(ctx),
            [Choice("none", ctx.t("staffreport.no_note")), Choice("cancel", ctx.t("staffreport.back"))])


def _languages_line(ctx: Ctx) -> str:
    """Who reads the note, in which language: it goes out as written (issue 14, item 19)."""
    report = rp.get_by_code(ctx.db, ctx.data.get("code", ""))
    found = triage.audience_languages(ctx.db, report) if report is not None else {}
    if not found:
        return ctx.t("staffreport.note_nobody")
    parts = [f"{t_in(lang, 'language.name')} ({count})" for lang, count in found.items()]
    return ctx.t("staffreport.note_languages", languages=ctx.t.join(parts))


@staff_note.on_input
def on_staff_note(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE and msg.choice == "cancel":
        return Go("staffreport.view", keep=True)
    note = msg.text.strip() if msg.kind == Kind.TEXT else ""
    return _change(ctx, ctx.data.get("to", ""), note=note)


@router.state("staffreport.reason", staff_only=True)
def staff_reason(ctx: Ctx) -> None:
    ctx.ask(ctx.t("staffreport.reason_prompt", code=ctx.data.get("code", "")),
            [Choice("cancel", ctx.t("staffreport.back"))])


@staff_reason.on_input
def on_staff_reason(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return Go("staffreport.view", keep=True)
    reason = msg.text.strip()
    if len(reason) < 3:
        return Invalid("staffreport.reason_short")
    return _change(ctx, "rejected", note=reason, reason=reason)


def _change(ctx: Ctx, status: str, *, note: str = "", reason: str = "") -> Transition:
    code = ctx.data.get("code", "")
    try:
        changed = domain.change_status(ctx.db, ctx.acting_as, code, status, note=note, reason=reason,
                                       catalog=ctx.catalog, tz=ctx.config.timezone, now=ctx.now)
    except rp.ReportError as err:
        ctx.say(ctx.t(err.key, **err.params))
        return Go("staffreport.view", keep=True)
    except Refused:
        ctx.say(ctx.t("staff.refused"))
        return Go("staffreport.view", keep=True)
    report, told = changed.report, changed.told
    ctx.data.pop("to", None)
    if told and told == [report.resident_id]:
        ctx.say(ctx.t("staffreport.status_changed_owner", code=report.code, status=status_name(ctx, status)))
    else:
        ctx.say(ctx.t.n("staffreport.status_changed", len(told), code=report.code, status=status_name(ctx, status)))
    return Go("staffreport.view", keep=True)


@router.state("staffreport.merge", staff_only=True)
def staff_merge(ctx: Ctx) -> None:
    ctx.ask(ctx.t("staffreport.merge_prompt", code=ctx.data.get("code", "")),
            [Choice("cancel", ctx.t("staffreport.back"))])


@staff_merge.on_input
def on_staff_merge(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return Go("staffreport.view", keep=True)
    found = CODE_RE.search(msg.text.upper())
    if not found:
        return Invalid("staffreport.merge_hint")
    source, target = rp.get_by_code(ctx.db, ctx.data.get("code", "")), rp.get_by_code(ctx.db, found.group(1))
    if source is None or target is None:
        ctx.say(ctx.t("report.unknown_code", code=found.group(1)))
        return Stay()
    if source.id == target.id:
        return Invalid("report.error.merge_self")
    return Go("staffreport.merge_confirm", {"into": target.code}, keep=True)


@router.state("staffreport.merge_confirm", staff_only=True, choice_only=True)
def staff_merge_confirm(ctx: Ctx) -> None:
    """Merging asks first; across categories or far apart it says so and needs "merge anyway"."""
    source, target = rp.get_by_code(ctx.db, ctx.data.get("code", "")), rp.get_by_code(ctx.db, ctx.data.get("into", ""))
    if source is None or target is None:
        ctx.ask(ctx.t("report.unknown_code", code=ctx.data.get("into", "")),
                [Choice("cancel", ctx.t("staffreport.back"))])
        return
    found = triage.merge_check(source, target)
    lines = [ctx.t("staffreport.merge_confirm", code=source.code, into=target.code,
                   category=category_name(ctx, target.category))]
    if found.other_category:
        lines.append(ctx.t("staffreport.merge_other_category", category=category_name(ctx, source.category),
                           into_category=category_name(ctx, target.category)))
    if found.far:
        lines.append(ctx.t("staffreport.merge_far", metres=int(found.metres or 0), limit=int(triage.MERGE_MAX_METRES))
                     if found.metres is not None else ctx.t("staffreport.merge_other_mahalle"))
    key = "force" if found.needs_override else "yes"
    label = N_("staffreport.merge_anyway") if found.needs_override else N_("staffreport.merge_yes")
    ctx.ask("\n".join(lines), [Choice(key, ctx.t(label)), Choice("cancel", ctx.t("staffreport.back"))])


@staff_merge_confirm.on_input
def on_staff_merge_confirm(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "cancel":
        ctx.data.pop("into", None)
        return Go("staffreport.view", keep=True)
    code, into = ctx.data.get("code", ""), ctx.data.pop("into", "")
    people = len(rp.to_be_told(ctx.db, rp.get_by_code(ctx.db, code)))
    report = _tried(ctx, lambda: triage.merge(ctx.db, ctx.acting_as, code, into, override=msg.choice == "force",
                                              catalog=ctx.catalog, tz=ctx.config.timezone, now=ctx.now))
    if report is not None:
        target = rp.get_report(ctx.db, report.merged_into_id)
        ctx.say(ctx.t.n("staffreport.merged", people, code=report.code, into=target.code))
    return Go("staffreport.view", keep=True)


def _unmerge(ctx: Ctx) -> Transition:
    report = _tried(ctx, lambda: triage.unmerge(ctx.db, ctx.acting_as, ctx.data.get("code", ""), catalog=ctx.catalog,
                                                tz=ctx.config.timezone, now=ctx.now))
    if report is not None:
        ctx.say(ctx.t("staffreport.unmerged", code=report.code, status=status_name(ctx, report.status)))
    return Go("staffreport.view", keep=True)


def _tried(ctx: Ctx, operation):
    """Run a domain operation; when it cannot be done or is refused, say why and return None."""
    try:
        return operation()
    except (rp.ReportError, triage.TriageError) as err:
        ctx.say(ctx.t(err.key, **err.params))
    except Refused:
        ctx.say(ctx.t("staff.refused"))
    return None
