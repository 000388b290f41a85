"""What staff do to one report (issue 15, the console's report page; the chat's /raporlar calls the
same functions): change its status with a note (one per language if they like), keep an internal
note, ask the reporter a question, assign it, merge it (with its guards) and undo a merge, hide or
blur a photo, move its pin, change its category; and file a report on a resident's behalf.

Each function takes the acting `Actor` (conversations/permissions.py), checks it first (a staff
member changes only their departments' reports or those assigned to them; a viewer nothing),
writes the change, its history event, its audit row (naming the staff member, `actor.who`) and
the outbox rows telling the residents, all in the caller's transaction. A refusal raises
`Refused`; a change that cannot be made raises `TriageError` with a catalog key.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlmodel import Session, select

from conversations import geo, notify
from conversations.domain import reports as domain
from conversations.i18n import LANGUAGES, N_
from conversations.messages import Choice, Outbound
from conversations.permissions import Actor, check
from storage import media as media_store
from storage import reports as rp
from storage.audit import audit
from storage.consents import record_consent
from storage.db import aware, utcnow
from storage.models import Resident, Staff
from storage.residents import identity_for

# A merge across categories or of reports further apart than this needs an explicit override.
MERGE_MAX_METRES = 300.0
# A question asked of a reporter is answered by their next free text within this time.
QUESTION_OPEN = timedelta(days=14)
QUESTION_PREFIX = "rq"  # the global choice on a question's message: rq:CODE
MAX_NOTE = 1000
FILED_CHANNEL = "panel"
PHOTO_ACTIONS = ("hide", "show", "blur", "unblur")


class TriageError(ValueError):
    """A change that cannot be made; `key` is the catalog message to show."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


# ---------------------------------------------------------------- scope
def department_of(report: rp.Report, catalog) -> str:
    """The department a report belongs to: its own (once routed), else its category's."""
    if report.department:
        return report.department
    cat = catalog.category(report.category) if catalog is not None else None
    return cat.department if cat is not None else ""


def may_change(actor: Actor, report: rp.Report, catalog) -> bool:
    from conversations.permissions import can

    return can(actor, "report.change", department=department_of(report, catalog), assignee_id=report.assignee_id)


def _changeable(db: Session, actor: Actor, code: str, catalog) -> rp.Report:
    check(actor, "report.read")
    report = rp.get_by_code(db, code)
    if report is None:
        raise TriageError(N_("report.error.unknown_code"), code=code)
    check(actor, "report.change", department=department_of(report, catalog), assignee_id=report.assignee_id)
    return report


def _event(db: Session, report: rp.Report, actor: Actor, kind: str, now: datetime, *, note: str = "",
           internal: bool = False, from_status: str = "", to_status: str = "") -> rp.ReportEvent:
    event = rp.ReportEvent(report_id=report.id, at=now, actor=actor.who[:64], kind=kind, note=note,
                           internal=internal, from_status=from_status, to_status=to_status)
    db.add(event)
    return event


def _responded(report: rp.Report, actor: Actor, now: datetime) -> None:
    rp.mark_responded(report, actor.who, now)  # the first staff answer starts the response time


def _touch(db: Session, report: rp.Report, now: datetime, catalog=None) -> None:
    report.updated_at = now
    if catalog is not None:
        rp.refresh_search_text(report, catalog)
    db.add(report)


# ---------------------------------------------------------------- who is told, in which language
def audience_languages(db: Session, report: rp.Report) -> dict[str, int]:
    """The languages of those a status change reaches (reporter and followers whose consent
    stands): language → how many; staff write one note, or one per language."""
    people = rp.consenting(db, rp.audience_of(db, report))
    found: dict[str, int] = {}
    for resident_id in people:
        resident = db.get(Resident, resident_id)
        if resident is not None:
            found[resident.locale] = found.get(resident.locale, 0) + 1
    return {lang: found[lang] for lang in LANGUAGES if lang in found}


def template_text(catalog, template_key: str, lang: str, report: rp.Report) -> str:
    """A response template's text in a language, its placeholders filled for this report."""
    template = next((r for r in catalog.response_templates if r.key == template_key), None)
    if template is None:
        return ""
    cat = catalog.category(report.category)
    hood = catalog.neighbourhood(report.mahalle) if report.mahalle else None
    values = {"code": report.code, "category": cat.name.get(lang) if cat else report.category,
              "mahalle": hood.name if hood else "", "municipality": catalog.municipality.name.get(lang)}
    return template.text.get(lang).format_map(values)


# ---------------------------------------------------------------- status
def change_status(db: Session, actor: Actor, code: str, status: str, *, note: str = "",
                  notes: dict[str, str] | None = None, catalog, tz: str = "Europe/Istanbul",
                  now: datetime | None = None) -> list[int]:
    """Set a report's status with a note for the residents. `notes` (language → text) gives one
    note per language: each resident gets the one in their language, else `note`. The residents
    told (reporter and followers whose consent stands) are returned."""
    report = _changeable(db, actor, code, catalog)
    notes = {lang: text.strip()[:MAX_NOTE] for lang, text in (notes or {}).items()
             if lang in LANGUAGES and text.strip()}
    note = (note or "").strip()[:MAX_NOTE] or next(iter(notes.values()), "")
    if status == "rejected" and len(note) < 3:
        raise TriageError(N_("staffreport.reason_short"))
    reason = note if status == "rejected" else ""
    try:
        if len(set(notes.values())) <= 1:  # one note for everyone: the chat's and the CLI's operation
            return domain.change_status(db, actor, report.code, status, note=note, reason=reason, catalog=catalog,
                                        tz=tz, now=now).told
        told = rp.to_be_told(db, report, status)
        previous = report.status
        report = rp.set_status(db, report.code, status, actor.who, note, reason=reason, now=now)
    except rp.ReportError as err:
        raise TriageError(err.key, **err.params) from None
    if previous != status:
        for resident_id in told:
            notify.notify_resident(db, resident_id, lambda t, lang: notify.status_notification(
                t, lang, report, note=notes.get(lang, note), catalog=catalog), tz=tz)
        audit(db, actor.who, "report.status_notes", report.code, languages=sorted(notes))
    return told


# ---------------------------------------------------------------- notes and questions
def internal_note(db: Session, actor: Actor, code: str, text: str, *, catalog, now: datetime | None = None) -> None:
    """A note staff keep on the report: in its history for staff, never sent to anyone."""
    report = _changeable(db, actor, code, catalog)
    text = (text or "").strip()[:MAX_NOTE]
    if not text:
        raise TriageError(N_("panel.report.note_empty"))
    now = now or utcnow()
    _event(db, report, actor, "note", now, note=text, internal=True)
    audit(db, actor.who, "report.internal_note", report.code)
    db.flush()


def ask_reporter(db: Session, actor: Actor, code: str, question: str, *, catalog, tz: str = "Europe/Istanbul",
                 now: datetime | None = None) -> str:
    """Ask the reporter a question through the outbox; their next free text in the chat (or the
    button's answer) lands in the report's history. Returns the language it was sent in."""
    report = _changeable(db, actor, code, catalog)
    question = (question or "").strip()[:MAX_NOTE]
    if len(question) < 3:
        raise TriageError(N_("panel.report.question_short"))
    if report.resident_id is None or not rp.consenting(db, [report.resident_id]):
        raise TriageError(N_("panel.report.question_nobody"))
    resident = db.get(Resident, report.resident_id)
    now = now or utcnow()
    sent = notify.notify_resident(db, report.resident_id, lambda t, lang: Outbound(
        text=t("report.question.asked", code=report.code, question=question),
        choices=[Choice(f"{QUESTION_PREFIX}:{report.code}", t("report.question.answer_button"))]), tz=tz)
    if not sent:
        raise TriageError(N_("panel.report.question_nobody"))
    _event(db, report, actor, "question", now, note=question)
    _responded(report, actor, now)
    _touch(db, report, now)
    audit(db, actor.who, "report.question", report.code)
    db.flush()
    return resident.locale


def open_question(db: Session, resident_id: int, *, code: str | None = None,
                  now: datetime | None = None) -> rp.Report | None:
    """The report whose latest question to this resident (its reporter) is still unanswered and
    recent; with `code`, only that report."""
    now = now or utcnow()
    query = (select(rp.ReportEvent, rp.Report).join(rp.Report, rp.Report.id == rp.ReportEvent.report_id)
             .where(rp.Report.resident_id == resident_id, rp.ReportEvent.kind == "question",
                    rp.ReportEvent.at >= now - QUESTION_OPEN)
             .order_by(rp.ReportEvent.id.desc()))
    if code:
        query = query.where(rp.Report.code == code)
    for event, report in db.exec(query.limit(5)):
        answered = db.exec(select(rp.ReportEvent.id).where(rp.ReportEvent.report_id == report.id,
                                                           rp.ReportEvent.kind == "answer",
                                                           rp.ReportEvent.id > event.id)).first()
        if answered is None:
            return report
    return None


def record_answer(db: Session, resident_id: int, report: rp.Report, text: str, *, now: datetime | None = None) -> None:
    """The reporter's answer to staff's question, in the report's history (audited as theirs)."""
    now = now or utcnow()
    db.add(rp.ReportEvent(report_id=report.id, at=now, actor=f"resident:{resident_id}", kind="answer",
                          note=(text or "").strip()[:MAX_NOTE]))
    report.updated_at = now
    db.add(report)
    audit(db, f"resident:{resident_id}", "report.answered", report.code)
    db.flush()


# ---------------------------------------------------------------- assignment, category, pin
def assign(db: Session, actor: Actor, code: str, *, department: str | None = None, assignee_id: int | None = None,
           catalog, now: datetime | None = None) -> rp.Report:
    """Give a report to another department and/or a person (assignee_id 0: nobody)."""
    report = _changeable(db, actor, code, catalog)
    now = now or utcnow()
    changed = {}
    if department is not None and department != department_of(report, catalog):
        if catalog.department(department) is None:
            raise TriageError(N_("panel.report.unknown_department"))
        report.department = department
        changed["department"] = department
        _event(db, report, actor, "assigned", now, note=f"department:{department}")
    if assignee_id is not None and (assignee_id or None) != report.assignee_id:
        if assignee_id:
            person = db.get(Staff, assignee_id)
            if person is None or not person.active or person.role not in ("admin", "staff"):
                raise TriageError(N_("panel.report.unknown_assignee"))
        report.assignee_id = assignee_id or None
        changed["assignee"] = f"staff:{assignee_id}" if assignee_id else ""
        _event(db, report, actor, "assigned", now, note=f"staff:{assignee_id}" if assignee_id else "staff:")
    if changed:
        _touch(db, report, now)
        audit(db, actor.who, "report.assigned", report.code, **changed)
        db.flush()
    return report


def change_category(db: Session, actor: Actor, code: str, category: str, *, catalog,
                    now: datetime | None = None) -> rp.Report:
    """Another category: the report goes to that category's department with its target time
    (counted from when it was filed)."""
    report = _changeable(db, actor, code, catalog)
    if catalog.category(category) is None:
        raise TriageError(N_("report.category_unknown"))
    if category == report.category:
        return report
    now = now or utcnow()
    previous = report.category
    report.category = category
    report.department, report.due_at = domain.routing(catalog, category, aware(report.created_at))
    _event(db, report, actor, "category", now, note=f"{previous}>{category}")
    _touch(db, report, now, catalog)
    audit(db, actor.who, "report.category", report.code, from_category=previous, to_category=category,
               department=report.department)
    db.flush()
    return report


def move_pin(db: Session, actor: Actor, code: str, lat: float, lon: float, *, catalog,
             now: datetime | None = None) -> rp.Report:
    """Put the report's pin where it really is; its mahalle follows the pin."""
    report = _changeable(db, actor, code, catalog)
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise TriageError(N_("report.location_bad"))
    now = now or utcnow()
    before = (report.latitude, report.longitude)
    report.latitude, report.longitude = round(lat, 6), round(lon, 6)
    found = geo.mahalle_of((lat, lon), catalog.neighbourhoods)
    if found:
        report.mahalle = found
    _event(db, report, actor, "moved", now, note=f"{lat:.5f}, {lon:.5f}")
    _touch(db, report, now, catalog)
    audit(db, actor.who, "report.moved", report.code, before=list(before), after=[report.latitude,
                                                                                      report.longitude])
    db.flush()
    return report


# ---------------------------------------------------------------- merge and its undo
@dataclass
class MergeCheck:
    """Why a merge needs an explicit override: other category, distance in metres (None: unknown)."""

    other_category: bool
    metres: float | None
    far: bool

    @property
    def needs_override(self) -> bool:
        return self.other_category or self.far


def merge_check(source: rp.Report, target: rp.Report) -> MergeCheck:
    metres = None
    if None not in (source.latitude, source.longitude, target.latitude, target.longitude):
        metres = rp.haversine_m(source.latitude, source.longitude, target.latitude, target.longitude)
        far = metres > MERGE_MAX_METRES
    else:  # no two pins: another mahalle is as good as far
        far = bool(source.mahalle and target.mahalle and source.mahalle != target.mahalle)
    return MergeCheck(source.category != target.category, metres, far)


def merge(db: Session, actor: Actor, code: str, into_code: str, *, override: bool = False, catalog,
          tz: str = "Europe/Istanbul", now: datetime | None = None) -> rp.Report:
    """Merge a duplicate into another report (its people follow the target and are told). Across
    categories or more than MERGE_MAX_METRES apart only with `override`."""
    source = _changeable(db, actor, code, catalog)
    target = _changeable(db, actor, into_code, catalog)
    if source.id == target.id:
        raise TriageError(N_("report.error.merge_self"), code=source.code)
    found = merge_check(source, target)
    if found.needs_override and not override:
        key = N_("panel.report.merge_other_category") if found.other_category else N_("panel.report.merge_far")
        raise TriageError(key, code=source.code, into=target.code, metres=int(found.metres or 0),
                          limit=int(MERGE_MAX_METRES))
    try:
        merged = domain.merge(db, actor, source.code, target.code, catalog=catalog, tz=tz, now=now).report
    except rp.ReportError as err:
        raise TriageError(err.key, **err.params) from None
    if override and found.needs_override:
        audit(db, actor.who, "report.merge_override", merged.code, into=target.code,
                   other_category=found.other_category, metres=None if found.metres is None else int(found.metres))
    _responded(merged, actor, now or utcnow())
    return merged


def unmerge(db: Session, actor: Actor, code: str, *, catalog, tz: str = "Europe/Istanbul",
            now: datetime | None = None) -> rp.Report:
    """Undo a merge: the report is itself again (its status before the merge); the people the
    merge made followers of the target follow it no more, and are told."""
    report = _changeable(db, actor, code, catalog)
    if report.status != "merged" or not report.merged_into_id:
        raise TriageError(N_("panel.report.not_merged"), code=report.code)
    target = db.get(rp.Report, report.merged_into_id)
    event = db.exec(select(rp.ReportEvent).where(rp.ReportEvent.report_id == report.id,
                                                 rp.ReportEvent.kind == "merged")
                    .order_by(rp.ReportEvent.id.desc())).first()
    now = now or utcnow()
    previous = (event.from_status if event is not None else "") or "seen"
    people = rp.audience_of(db, report)
    if target is not None and event is not None:
        for follower in db.exec(select(rp.ReportFollower).where(rp.ReportFollower.report_id == target.id,
                                                                rp.ReportFollower.resident_id.in_(people))):
            if abs((aware(follower.created_at) - aware(event.at)).total_seconds()) < 1:
                db.delete(follower)
                target.supporters = max(0, target.supporters - 1)
        _event(db, target, actor, "unmerged", now, note=report.code)
        _touch(db, target, now)
    report.status = previous
    report.merged_into_id = None
    report.closed_at = None
    _event(db, report, actor, "unmerged", now, note=target.code if target else "", from_status="merged",
           to_status=previous)
    _touch(db, report, now)
    audit(db, actor.who, "report.unmerged", report.code, was_into=target.code if target else "")
    for resident_id in rp.consenting(db, people):
        notify.notify_resident(db, resident_id, lambda t, lang: Outbound(
            text=t("report.notify.unmerged", code=report.code)), tz=tz)
    db.flush()
    return report


# ---------------------------------------------------------------- photos
def set_photo(db: Session, actor: Actor, code: str, media_id: int, action: str, *, catalog,
              media_dir: Path | str, now: datetime | None = None) -> rp.ReportMedia:
    """Hide a photo from every view but staff's, show it again, blur it (a blurred re-encoded copy
    in the media store, shown to viewers and publicly instead) or take the blur off."""
    report = _changeable(db, actor, code, catalog)
    item = db.get(rp.ReportMedia, media_id)
    if item is None or item.report_id != report.id or item.kind != "photo" or action not in PHOTO_ACTIONS:
        raise TriageError(N_("panel.report.no_photo"))
    if action in ("hide", "show"):
        item.hidden = action == "hide"
    elif action == "blur":
        item.blurred_path = str(blurred_copy(Path(item.path), media_dir))
    else:
        item.blurred_path = ""
    db.add(item)
    _event(db, report, actor, "photo", now or utcnow(), note=action, internal=True)
    audit(db, actor.who, f"report.photo_{action}", report.code, media=item.id)
    db.flush()
    return item


def blurred_copy(path: Path, media_dir: Path | str) -> Path:
    """A strongly blurred copy of a stored photo, re-encoded (no metadata) into the media store."""
    from PIL import Image, ImageFilter

    try:
        with Image.open(path) as image:
            image.load()
            rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise TriageError(N_("panel.report.no_photo")) from exc
    radius = max(8, min(rgb.size) // 12)
    blurred = rgb.filter(ImageFilter.GaussianBlur(radius))
    buffer = io.BytesIO()
    blurred.save(buffer, "JPEG", quality=80)
    return media_store.store(media_dir, buffer.getvalue(), ".jpg")


# ---------------------------------------------------------------- on a resident's behalf
def whatsapp_address(number: str) -> str:
    """"whatsapp:+905551234567" from what a clerk types ("0555 123 45 67", "+90 555...", "90555...")."""
    digits = re.sub(r"\D", "", number or "")
    if (number or "").strip().startswith("+"):
        pass
    elif digits.startswith("0") and len(digits) == 11:     # 0555 123 45 67: a Turkish number
        digits = "90" + digits[1:]
    elif len(digits) == 10 and digits.startswith("5"):    # 555 123 45 67
        digits = "90" + digits
    if not re.fullmatch(r"[1-9]\d{6,14}", digits):
        return ""
    return f"whatsapp:+{digits}"


def file_on_behalf(db: Session, actor: Actor, *, catalog, category: str, description: str,
                   mahalle: str | None = None, lat: float | None = None, lon: float | None = None,
                   street: str = "", photo: bytes | None = None, media_dir: Path | str = "",
                   limits: media_store.Limits | None = None, whatsapp: str = "", consent: bool = False,
                   notice_version: str = "", tz: str = "Europe/Istanbul", now: datetime | None = None) -> rp.Report:
    """A clerk files a report for someone who phoned or walked in. With a WhatsApp number (and
    their consent, which the clerk records on their behalf, audited) the report is that
    resident's: they are told its code now and of its changes later."""
    check(actor, "report.file")
    if catalog.category(category) is None:
        raise TriageError(N_("report.category_unknown"))
    description = (description or "").strip()
    if len(description) < 3:
        raise TriageError(N_("report.describe_short"))
    if lat is None and lon is None and not mahalle:
        raise TriageError(N_("panel.new.where_missing"))
    if mahalle and catalog.neighbourhood(mahalle) is None:
        raise TriageError(N_("report.mahalle_unknown"))
    if lat is not None and lon is not None:
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise TriageError(N_("report.location_bad"))
        mahalle = mahalle or geo.mahalle_of((lat, lon), catalog.neighbourhoods)
    resident_id = None
    if whatsapp.strip():
        address = whatsapp_address(whatsapp)
        if not address:
            raise TriageError(N_("panel.new.bad_number"))
        if not consent:
            raise TriageError(N_("panel.new.consent_missing"))
        identity, resident = identity_for(db, "whatsapp", address)
        resident_id = resident.id
        record_consent(db, resident.id, rp.CONSENT_PURPOSE, True, notice_version, channel=FILED_CHANNEL)
        audit(db, actor.who, "consent.recorded_on_behalf", f"resident:{resident.id}", purpose=rp.CONSENT_PURPOSE)
    media = []
    if photo:
        try:
            stored = media_store.keep("photo", photo, media_dir, limits or media_store.Limits())
        except media_store.MediaRefused as refused:
            raise TriageError(N_("panel.new.bad_photo")) from refused
        media.append({"path": str(stored.path), "content_type": stored.content_type, "size": stored.size,
                      "kind": "photo"})
    now = now or utcnow()
    department, due = domain.routing(catalog, category, now)
    report = rp.create_report(db, prefix=catalog.municipality.tracking_prefix, resident_id=resident_id,
                              category=category, description=description[:1000], latitude=lat, longitude=lon,
                              mahalle=mahalle, address=street[:200], media=media, channel=FILED_CHANNEL,
                              actor=actor.who, catalog=catalog, department=department, due_at=due, now=now)
    audit(db, actor.who, "report.filed_on_behalf", report.code, notified=resident_id is not None)
    if resident_id is not None:
        notify.notify_resident(db, resident_id, lambda t, lang: Outbound(
            text=t("report.filed_for_you", code=report.code,
                   category=catalog.category(category).name.get(lang),
                   municipality=catalog.municipality.name.get(lang))), tz=tz)
    db.flush()
    return report


# ---------------------------------------------------------------- the history, as staff read it
EVENT_KEYS = {"created": N_("report.history.created"), "followed": N_("report.history.followed"),
              "reopened": N_("report.history.reopened"), "rated": N_("report.history.rated"),
              "note": N_("report.history.note"), "question": N_("report.history.question"),
              "answer": N_("report.history.answer"), "moved": N_("report.history.moved"),
              "unmerged": N_("report.history.unmerged"), "photo": N_("report.history.photo"),
              "supporter_comment": N_("report.history.supporter_comment")}
PHOTO_KEYS = {"hide": N_("report.history.photo_hide"), "show": N_("report.history.photo_show"),
              "blur": N_("report.history.photo_blur"), "unblur": N_("report.history.photo_unblur")}


def actor_name(t, actor: str, report: rp.Report, staff_names: dict[int, str]) -> str:
    """Who did it, in words: a staff member's name, "the reporter", "a resident", the CLI, the
    system; never an internal id (residents stay unnamed)."""
    kind, _, rest = (actor or "").partition(":")
    if kind == "staff":
        return staff_names.get(int(rest), "") or t("report.actor.staff") if rest.isdigit() else t("report.actor.staff")
    if kind == "resident":
        if rest.isdigit() and report.resident_id == int(rest):
            return t("report.actor.reporter")
        return t("report.actor.resident")
    if kind == "cli":
        return t("report.actor.cli")
    return t("report.actor.system")


def event_text(t, event: rp.ReportEvent, report: rp.Report, catalog, staff_names: dict[int, str],
               status_name) -> str:
    """One history event in words (without time and actor)."""
    kind, note = event.kind, event.note or ""
    if kind == "status":
        return t("report.history.status", status=status_name(event.to_status))
    if kind == "merged":
        if event.to_status == "merged":
            return t("report.history.merged_into", code=note)
        return t("report.history.merged_from", code=note)
    if kind == "assigned":
        what, _, value = note.partition(":")
        if what == "department":
            dep = catalog.department(value)
            return t("report.history.assigned_department", department=dep.name.get(t.lang) if dep else value)
        if value.isdigit():
            return t("report.history.assigned_person", name=staff_names.get(int(value), "") or t("report.actor.staff"))
        return t("report.history.unassigned")
    if kind == "category":
        _, _, new = note.partition(">")
        cat = catalog.category(new)
        return t("report.history.category", category=cat.name.get(t.lang) if cat else new)
    if kind == "photo":
        return t(PHOTO_KEYS.get(note, EVENT_KEYS["photo"]))
    if kind == "rated":
        return t("report.history.rated", rating=note)
    if kind == "moved":
        return t("report.history.moved", where=note)
    if kind == "unmerged":
        return t("report.history.unmerged", code=note)
    return t(EVENT_KEYS.get(kind, N_("report.history.other")))


def shows_note(event: rp.ReportEvent) -> bool:
    """Whether an event's note is words to show (not a code, key or value the text already says)."""
    return event.kind in ("status", "note", "question", "answer", "reopened", "supporter_comment") and bool(event.note)


def staff_names_for(db: Session, events) -> dict[int, str]:
    ids = set()
    for event in events:
        for value in (event.actor, event.note if event.kind == "assigned" else ""):
            kind, _, rest = (value or "").partition(":")
            if kind == "staff" and rest.isdigit():
                ids.add(int(rest))
    if not ids:
        return {}
    return {s.id: s.name for s in db.exec(select(Staff).where(Staff.id.in_(ids)))}
