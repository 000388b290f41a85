"""Problem reports, the resident's side (issue 4): /bildir files a report, /bildirimlerim (alias /raporlarim) lists them.

/bildir → consent "reports" → category → location (a pin, whose mahalle the resident confirms in one
tap, or mahalle + street/landmark) → (an open report of the same category nearby? it is shown, with
its description and photo, before the resident writes anything: follow it, adding what they want
staff to know as a supporter's comment, or go on) → description (text or a voice note) → up to 3
photos → summary with edit buttons → the tracking code, and the category's usual response time.

Status changes reach the reporter and the followers through the outbox (storage/reports.py); on
"resolved" they are asked whether it is solved, with buttons that work from any state
(the router's global choices "rs:yes|no:CODE", and the rating "rr:1..5:CODE").
"""
from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, select

from conversations import geo, notify
from conversations.core import require_consent
from conversations.domain import reports as domain
from conversations.domain import triage
from conversations.i18n import LANGUAGES, N_, translator
from conversations.messages import Choice, Inbound, Kind, Outbound
from conversations.permissions import Actor
from conversations.registry import Router
from conversations.step import IDLE, Ctx, EngineConfig, Go, Invalid, Stay, Transition, media_refusal
from conversations.text import fold, match_mahalle, match_options, truncate
from storage import reports as rp
from storage.attachments import stored_name
from storage.db import aware

MAX_PHOTOS = 3
MAX_DESCRIPTION = 1000
MIN_DESCRIPTION = 3
NEARBY_METRES = 100
NEARBY_DAYS = 30
DEFAULT_PER_HOUR = 5
CODE_RE = re.compile(r"\b([A-Z]{2,6}-\d{4}-\d{6})\b")
# The command names a resident types, per language (Telegram menu names must be Latin).
REPORT_COMMAND = {"tr": "bildir", "en": "report", "ar": "report"}
# one word for one thing: the menu says "📋 Bildirimlerim", so does the command (/raporlarim stays an alias)
MINE_COMMAND = {"tr": "bildirimlerim", "en": "myreports", "ar": "myreports"}

router = Router("reports")
router.menu_item(10, "report", N_("report.menu"), "cmd:report")
router.menu_item(15, "myreports", N_("report.menu_mine"), "cmd:myreports")


def _supporter_comments(db: Session, resident_id: int) -> list[rp.ReportEvent]:
    """What the resident added to reports they followed (report_event "supporter_comment")."""
    return list(db.exec(select(rp.ReportEvent).where(rp.ReportEvent.actor == f"resident:{resident_id}",
                                                     rp.ReportEvent.kind == "supporter_comment")
                        .order_by(rp.ReportEvent.id)))


@router.exporter
def export_reports(db: Session, resident_id: int) -> dict[str, Any]:
    """Their reports, the reports they follow, and what they added to those as a supporter."""
    data = rp.export_resident(db, resident_id)
    comments = []
    for event in _supporter_comments(db, resident_id):
        report = rp.get_report(db, event.report_id)
        photos = db.exec(select(rp.ReportMedia).where(rp.ReportMedia.event_id == event.id)).all()
        comments.append({"code": report.code if report else None, "at": aware(event.at).isoformat(),
                         "text": event.note, "photos": [stored_name(m.path) or Path(m.path).name for m in photos]})
    data["supporter_comments"] = comments
    return data


@router.eraser
def erase_reports(db: Session, resident_id: int, config: EngineConfig):
    """Their reports stay, anonymised; their follows, notes and files go (storage.reports), and
    so do the photos they added to reports they followed (their comments' texts go with the notes)."""
    photos = []
    events = [e.id for e in _supporter_comments(db, resident_id)]
    if events:
        photos = db.exec(select(rp.ReportMedia).where(rp.ReportMedia.event_id.in_(events))).all()
    erased = rp.erase_resident(db, resident_id)
    for media in photos:
        erased.files.add(media.path)
        db.delete(media)
    db.flush()
    return erased


@router.merger
def merge_report_actors(db: Session, gone_id: int, keep_id: int, config: EngineConfig) -> None:
    """Two residents become one (conversations/linking.py): what the gone one wrote in reports'
    histories (supporter comments, reopening notes) is the kept one's, for their export and erasure."""
    db.exec(update(rp.ReportEvent).where(rp.ReportEvent.actor == f"resident:{gone_id}")
            .values(actor=f"resident:{keep_id}"))


@router.on_withdrawal("reports")
def stop_report_news(db: Session, resident_id: int, now: datetime, config: EngineConfig) -> None:
    """No news of any report any more; the reports they follow are no longer followed."""
    rp.withdraw_consent(db, resident_id)


# ---------------------------------------------------------------- helpers
def _per_hour(ctx: Ctx) -> int:
    return int(getattr(ctx.config.settings, "reports_per_hour", DEFAULT_PER_HOUR) or DEFAULT_PER_HOUR)


def _rate_limited(ctx: Ctx) -> bool:
    """Say so and return True when the resident filed their hourly number of reports already."""
    limit = _per_hour(ctx)
    since = ctx.now - timedelta(hours=1)
    if rp.count_for_resident_since(ctx.db, ctx.resident.id, since) < limit:
        return False
    recent = [r for r in rp.list_for_resident(ctx.db, ctx.resident.id, limit=limit) if aware(r.created_at) >= since]
    oldest = min((aware(r.created_at) for r in recent), default=ctx.now)
    ctx.say(ctx.t.n("report.rate_limited", limit, limit=limit, when=ctx.when(oldest + timedelta(hours=1))))
    return True


def category_name(ctx: Ctx, key: str) -> str:
    cat = ctx.catalog.category(key)
    return cat.name.get(ctx.lang) if cat else key


def mahalle_name(ctx: Ctx, key: str | None) -> str:
    hood = ctx.catalog.neighbourhood(key) if key else None
    return hood.name if hood else (key or "")


def status_name(ctx: Ctx, status: str) -> str:
    return ctx.t(notify.STATUS_KEYS.get(status, status))


def location_text(ctx: Ctx, lat: float | None, lon: float | None, mahalle: str | None, street: str) -> str:
    if lat is not None and lon is not None:
        text = ctx.t("report.location_pin", lat=f"{lat:.5f}", lon=f"{lon:.5f}")
        if mahalle:
            text += " · " + ctx.t("report.location_mahalle", mahalle=mahalle_name(ctx, mahalle))
        return text + (f" · {street}" if street else "")
    if mahalle:
        return ctx.t("report.location_mahalle", mahalle=mahalle_name(ctx, mahalle)) + (f" · {street}" if street else "")
    return street or ctx.t("common.none")


def _media_ok(ctx: Ctx, msg: Inbound) -> dict[str, Any] | None:
    """The first attachment of a message as stored media, or None after saying why it was not kept
    (not a photo, too many pixels, could not be received): the draft stays as it was."""
    refusal = media_refusal(msg, N_("report.media_failed"))
    if refusal is not None:
        ctx.say(ctx.t(refusal))
        return None
    media = msg.media[0]
    return {"path": media.ref, "content_type": media.content_type, "size": media.size}


def _after(ctx: Ctx, next_state: str) -> Transition:
    """Next step of the flow, or back to the summary when the resident was editing one part."""
    if ctx.data.pop("edit", False):
        return Go("report.summary", keep=True)
    return Go(next_state, keep=True)


# ---------------------------------------------------------------- /bildir
@router.command("report", "bildir", "report", menu=REPORT_COMMAND, description=N_("report.command"))
def cmd_report(ctx: Ctx, text: str) -> Transition:
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", keep=True)
    if _rate_limited(ctx):
        return Go(IDLE)
    return require_consent(ctx, "reports", "report.category", {})


@router.state("report.category")
def report_category(ctx: Ctx) -> None:
    candidates = ctx.data.get("candidates")
    cats = [c for c in ctx.catalog.categories if not candidates or c.key in candidates]
    text = ctx.t("report.category_ambiguous") if candidates else ctx.t("report.category_prompt")
    ctx.ask(text, [Choice(f"c:{c.key}", c.name.get(ctx.lang)) for c in cats], columns=2)


@report_category.on_input
def on_report_category(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        key = msg.choice.removeprefix("c:")
    else:
        found = match_options(msg.text, [(c.key, c.words()) for c in ctx.catalog.categories])
        if not found:
            ctx.data.pop("candidates", None)
            return Invalid("report.category_unknown")
        if len(found) > 1:
            ctx.data["candidates"] = found
            return Go("report.category", keep=True)
        key = found[0]
    if ctx.catalog.category(key) is None:
        return Invalid("report.category_unknown")
    ctx.data.pop("candidates", None)
    ctx.data["category"] = key
    if ctx.data.get("edit"):  # another category may have a similar report at the same place
        ctx.data.pop("dups_checked", None)
        return _located(ctx)
    return _after(ctx, "report.location")


@router.state("report.describe", accepts={Kind.TEXT, Kind.VOICE, Kind.PHOTO, Kind.STICKER}, long_text=True)
def report_describe(ctx: Ctx) -> None:
    ctx.ask(ctx.t("report.describe_prompt", category=category_name(ctx, ctx.data.get("category", ""))))


@report_describe.on_input
def on_report_describe(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.STICKER:
        return Invalid("report.describe_sticker")
    if msg.kind == Kind.VOICE:
        media = _media_ok(ctx, msg)
        if media is None:
            return Stay()
        ctx.data["voice"] = {**media, "content_type": media["content_type"] or "audio/ogg"}
        ctx.say(ctx.t("report.voice_saved"))
        return _after(ctx, "report.photos")
    if msg.kind == Kind.PHOTO:
        media = _media_ok(ctx, msg)
        if media is None:
            return Stay()
        photos = list(ctx.data.get("photos") or [])  # copy on write: the session's JSON must change
        if len(photos) < MAX_PHOTOS:
            photos.append({**media, "content_type": media["content_type"] or "image/jpeg"})
        ctx.data["photos"] = photos
        if (msg.text or "").strip():
            return _describe_text(ctx, msg.text)
        ctx.say(ctx.t("report.photo_early"))
        return Stay()
    return _describe_text(ctx, msg.text)


def usable_text(ctx: Ctx, text: str) -> str | None:
    """A description as kept: None when it says too little (fewer than MIN_DESCRIPTION letters or
    digits: "ok", "👍👍👍", "!!!"), trimmed to MAX_DESCRIPTION with a note when it is longer
    (never refused whole)."""
    text = text.strip()
    if sum(1 for c in text if unicodedata.category(c)[0] in "LN") < MIN_DESCRIPTION:
        return None
    if len(text) > MAX_DESCRIPTION:
        text = truncate(text, MAX_DESCRIPTION)
        ctx.say(ctx.t("report.describe_trimmed", limit=MAX_DESCRIPTION))
    return text


def _describe_text(ctx: Ctx, text: str) -> Transition:
    kept = usable_text(ctx, text)
    if kept is None:
        return Invalid("report.describe_short")
    ctx.data["description"] = kept
    return _after(ctx, "report.photos")


@router.state("report.location", accepts={Kind.LOCATION, Kind.TEXT, Kind.CHOICE})
def report_location(ctx: Ctx) -> None:
    choices = []
    if ctx.resident.mahalle and ctx.catalog.neighbourhood(ctx.resident.mahalle):
        choices.append(Choice(f"m:{ctx.resident.mahalle}",
                              ctx.t("report.location_mine", mahalle=mahalle_name(ctx, ctx.resident.mahalle))))
    choices.append(Choice("list", ctx.t("report.location_list")))
    ctx.data.pop("pin_keep", None)
    ctx.ask(ctx.t("report.location_prompt"), choices, **_location_request(ctx))


def _location_request(ctx: Ctx) -> dict[str, str]:
    """A one-tap "📍 Konumumu gönder" button where the channel has one (Telegram), and how to
    share a location where it has none (WhatsApp)."""
    return {"request_location": ctx.t("report.send_location"), "location_hint": ctx.t("report.location_hint")}


def _pin_ok(msg: Inbound) -> bool:
    return msg.latitude is not None and msg.longitude is not None and -90 <= msg.latitude <= 90 \
        and -180 <= msg.longitude <= 180


@report_location.on_input
def on_report_location(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.LOCATION:
        if not _pin_ok(msg):
            return Invalid("report.location_bad")
        return _pin(ctx, msg.latitude, msg.longitude)
    if msg.kind == Kind.CHOICE:
        if msg.choice == "list":
            return Go("report.mahalle", {"_page": 0}, keep=True)
        return _set_mahalle(ctx, msg.choice.removeprefix("m:"))
    return _typed_mahalle(ctx, msg.text)


def _typed_mahalle(ctx: Ctx, text: str) -> Transition:
    found = match_mahalle(text, ctx.catalog.neighbourhoods)
    if len(found) == 1:
        return _set_mahalle(ctx, found[0])
    if not found:
        return Invalid("report.mahalle_unknown")
    return Go("report.mahalle", {"candidates": found, "_page": 0}, keep=True)


def _pin(ctx: Ctx, lat: float, lon: float) -> Transition:
    """A pin: far outside the district, a polite question; else its mahalle (the polygon holding
    it, else the nearest centre: conversations/geo.py), for the resident to confirm in one tap."""
    ctx.data.update(lat=lat, lon=lon, mahalle=None, street="")
    point = (lat, lon)
    if geo.where_in_district(point, ctx.catalog.municipality.boundary) == geo.Where.OUTSIDE:
        return Go("report.pin", {"pin_outside": True, "pin_mahalle": None}, keep=True)
    key = geo.mahalle_of(point, ctx.catalog.neighbourhoods)
    if key is None:
        ctx.say(ctx.t("report.location_saved"))
        return _located(ctx)
    return Go("report.pin", {"pin_outside": False, "pin_mahalle": key}, keep=True)


@router.state("report.pin", accepts={Kind.LOCATION, Kind.TEXT, Kind.CHOICE})
def report_pin(ctx: Ctx) -> None:
    if ctx.data.get("pin_outside"):
        ctx.ask(ctx.t("report.pin_outside", municipality=ctx.catalog.municipality.name.get(ctx.lang)),
                [Choice("keep", ctx.t("report.pin_keep")), Choice("list", ctx.t("report.location_list"))],
                **_location_request(ctx))
        return
    name = mahalle_name(ctx, ctx.data.get("pin_mahalle"))
    ctx.ask(ctx.t("report.pin_mahalle", mahalle=name),
            [Choice("yes", ctx.t("report.pin_yes", mahalle=name)), Choice("list", ctx.t("report.pin_other"))])


@report_pin.on_input
def on_report_pin(ctx: Ctx, msg: Inbound) -> Transition:
    outside = ctx.data.get("pin_outside")
    if msg.kind == Kind.LOCATION:
        if not _pin_ok(msg):
            return Invalid("report.location_bad")
        return _pin(ctx, msg.latitude, msg.longitude)
    if outside:
        if msg.kind == Kind.CHOICE and msg.choice == "keep":  # "yes, there": the pin stays, no mahalle
            return _pin_confirmed(ctx, None)
        ctx.data.update(lat=None, lon=None)  # not in the district: the mahalle named now is the place
    else:
        if msg.kind == Kind.CHOICE and msg.choice == "yes":
            return _pin_confirmed(ctx, ctx.data.get("pin_mahalle"))
        ctx.data["pin_keep"] = True  # another mahalle, named now, is the pin's; the pin stays
    if msg.kind == Kind.TEXT:
        return _typed_mahalle(ctx, msg.text)
    return Go("report.mahalle", {"_page": 0}, keep=True)


def _pin_confirmed(ctx: Ctx, key: str | None) -> Transition:
    ctx.data.pop("pin_keep", None)
    ctx.data["mahalle"] = key
    return _located(ctx)


def _set_mahalle(ctx: Ctx, key: str) -> Transition:
    if ctx.catalog.neighbourhood(key) is None:
        return Invalid("report.mahalle_unknown")
    ctx.data.pop("candidates", None)
    if ctx.data.get("pin_keep") and ctx.data.get("lat") is not None:  # the mahalle of a pin given
        return _pin_confirmed(ctx, key)
    ctx.data.update(lat=None, lon=None, mahalle=key)
    return Go("report.street", keep=True)


@router.state("report.mahalle")
def report_mahalle(ctx: Ctx) -> None:
    candidates = ctx.data.get("candidates")
    hoods = [n for n in ctx.catalog.neighbourhoods if not candidates or n.key in candidates]
    items = [Choice(f"m:{n.key}", n.name) for n in hoods]
    ctx.ask(ctx.t("report.mahalle_prompt"), ctx.paged(items, ctx.data.get("_page", 0)), columns=2)


@report_mahalle.on_input
def on_report_mahalle(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return _set_mahalle(ctx, msg.choice.removeprefix("m:"))
    found = match_mahalle(msg.text, ctx.catalog.neighbourhoods)
    if len(found) == 1:
        return _set_mahalle(ctx, found[0])
    if not found:
        ctx.data.pop("candidates", None)
        return Invalid("report.mahalle_unknown")
    ctx.data.update(candidates=found, _page=0)
    return Go("report.mahalle", keep=True)


@router.state("report.street", accepts={Kind.TEXT, Kind.LOCATION})
def report_street(ctx: Ctx) -> None:
    ctx.ask(ctx.t("report.street_prompt", mahalle=mahalle_name(ctx, ctx.data.get("mahalle"))))


@report_street.on_input
def on_report_street(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.LOCATION:  # a pin is even better: keep the mahalle, ask nothing more
        ctx.data.update(lat=msg.latitude, lon=msg.longitude)
        ctx.say(ctx.t("report.location_saved"))
        return _located(ctx)
    street = msg.text.strip()
    if len(street) < 3:
        return Invalid("report.street_short")
    ctx.data["street"] = truncate(street, 200)
    return _located(ctx)


def _located(ctx: Ctx) -> Transition:
    """Category and place known: is the same problem already reported nearby? Shown now, before
    the resident writes anything; else on to the description (or back to the summary)."""
    d = ctx.data
    if not d.get("category") or ctx.catalog.category(d["category"]) is None:
        return Go("report.category", keep=True)
    d["dups_checked"] = True
    dups = rp.find_nearby_open(ctx.db, d["category"], d.get("lat"), d.get("lon"), d.get("mahalle"),
                               within_m=NEARBY_METRES, days=NEARBY_DAYS, now=ctx.now,
                               exclude_resident=ctx.resident.id)
    if dups:
        return Go("report.duplicate", {"dups": [r.code for r in dups], "dups_shown": False}, keep=True)
    return _after(ctx, "report.describe")


@router.state("report.photos", accepts={Kind.PHOTO, Kind.CHOICE, Kind.TEXT})
def report_photos(ctx: Ctx) -> None:
    n = len(ctx.data.get("photos") or [])
    if n:
        _ask_more_photos(ctx, n)
        return
    ctx.ask(ctx.t("report.photos_prompt", max=MAX_PHOTOS), [Choice("done", ctx.t("report.photos_skip"))])


def _ask_more_photos(ctx: Ctx, n: int) -> None:
    """After a photo: how many are in, how many more may come, and "✅ Devam" (never "without photo")."""
    left = MAX_PHOTOS - n
    ctx.ask(ctx.t("report.photo_saved", n=n, max=MAX_PHOTOS) + "\n" + ctx.t.n("report.photos_more", left, left=left),
            [Choice("done", ctx.t("report.photos_done"))])


def says_done(ctx: Ctx, text: str) -> bool:
    """"tamam", "devam", "bitti", "done", "تم"...: the resident has no more photos to add."""
    typed = fold(text)
    return any(typed == fold(w) for lang in LANGUAGES for w in re.split("[,،]", translator(lang)("report.done_words")))


@report_photos.on_input
def on_report_photos(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE or (msg.kind == Kind.TEXT and says_done(ctx, msg.text)):
        ctx.data.pop("edit", None)
        return Go("report.summary", keep=True)
    if msg.kind == Kind.TEXT:
        return Invalid("report.photos_hint")
    return _add_photo(ctx, msg, then="report.photos")


def _add_photo(ctx: Ctx, msg: Inbound, then: str) -> Transition:
    photos = list(ctx.data.get("photos") or [])  # copy on write: the session's JSON must change
    if len(photos) >= MAX_PHOTOS:
        ctx.say(ctx.t("report.photos_max", max=MAX_PHOTOS))
        return Go("report.summary", keep=True)
    media = _media_ok(ctx, msg)
    if media is None:
        return Stay()
    photos.append({**media, "content_type": media["content_type"] or "image/jpeg"})
    ctx.data["photos"] = photos
    if len(photos) >= MAX_PHOTOS or then == "report.summary":
        ctx.say(ctx.t("report.photo_saved", n=len(photos), max=MAX_PHOTOS))
        ctx.data.pop("edit", None)
        return Go("report.summary", keep=True)
    _ask_more_photos(ctx, len(photos))
    return Stay()


@router.state("report.summary", accepts={Kind.CHOICE, Kind.TEXT, Kind.PHOTO})
def report_summary(ctx: Ctx) -> None:
    d = ctx.data
    description = truncate(d.get("description") or "", 300)
    if d.get("voice"):
        description = (description + " · " if description else "") + ctx.t("report.summary_voice")
    ctx.ask(ctx.t("report.summary", category=category_name(ctx, d.get("category", "")),
                  description=description or ctx.t("common.none"),
                  location=location_text(ctx, d.get("lat"), d.get("lon"), d.get("mahalle"), d.get("street", "")),
                  photos=len(d.get("photos") or [])),
            [Choice("confirm", ctx.t("report.confirm")),
             Choice("e:category", ctx.t("report.edit_category")),
             Choice("e:description", ctx.t("report.edit_description")),
             Choice("e:location", ctx.t("report.edit_location")),
             Choice("e:photos", ctx.t("report.edit_photos")),
             Choice("cancel", ctx.t("report.discard"))], columns=2)


@report_summary.on_input
def on_report_summary(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.PHOTO:
        return _add_photo(ctx, msg, then="report.summary")
    if msg.kind != Kind.CHOICE:
        return Invalid("engine.choose")
    if msg.choice == "cancel":
        ctx.say(ctx.t("cancel.done"))
        return Go(IDLE)
    if msg.choice.startswith("e:"):
        part = msg.choice[2:]
        ctx.data["edit"] = True
        if part == "category":
            return Go("report.category", keep=True)
        if part == "description":
            ctx.data.pop("voice", None)
            return Go("report.describe", keep=True)
        if part == "location":
            ctx.data.update(lat=None, lon=None, mahalle=None, street="", dups_checked=False)
            return Go("report.location", keep=True)
        ctx.data["photos"] = []
        return Go("report.photos", keep=True)
    # confirm (similar reports nearby were shown when the place was given)
    missing = _missing_part(ctx)
    if missing:
        return Go(missing, keep=True)
    if not ctx.data.get("dups_checked"):  # a draft from before the check moved: check now
        ctx.data["edit"] = True
        return _located(ctx)
    return file_report(ctx)


def _missing_part(ctx: Ctx) -> str | None:
    """The step to ask again when something the report needs is missing (an old or edited session)."""
    d = ctx.data
    if not d.get("category") or ctx.catalog.category(d["category"]) is None:
        return "report.category"
    if not d.get("description") and not d.get("voice"):
        return "report.describe"
    if d.get("lat") is None and not d.get("mahalle"):
        return "report.location"
    return None


def file_report(ctx: Ctx) -> Transition:
    """Write the report, its attachments and its first event in this step's transaction."""
    missing = _missing_part(ctx)
    if missing:
        return Go(missing, keep=True)
    if _rate_limited(ctx):
        return Go(IDLE)
    d = ctx.data
    media = [{**p, "kind": "photo"} for p in d.get("photos") or []]
    if d.get("voice"):
        media.append({**d["voice"], "kind": "voice"})
    report = domain.file(ctx.db, Actor.resident(ctx.resident.id), prefix=ctx.catalog.municipality.tracking_prefix,
                         category=d["category"], description=d.get("description", ""),
                         latitude=d.get("lat"), longitude=d.get("lon"), mahalle=d.get("mahalle"),
                         address=d.get("street", ""), media=media, channel=ctx.channel, catalog=ctx.catalog,
                         now=ctx.now)
    saved = ctx.t("report.saved", code=report.code, command="/" + MINE_COMMAND.get(ctx.lang, "myreports"))
    usual = usual_response_time(ctx, d["category"])
    ctx.say(saved + ("\n" + usual if usual else ""))
    return Go(IDLE)


def usual_response_time(ctx: Ctx, category_key: str) -> str:
    """"⏱ We usually answer this kind of report within 3 working days", from the category's
    `sla_hours`: working days when they count working hours (conversations/worktime.py: a working
    day is the catalog's hours of one day), else calendar days or hours; "" without a target."""
    category = ctx.catalog.category(category_key)
    if category is None or not category.sla_hours:
        return ""
    hours = category.sla_hours
    per_day = 24.0 if category.sla_calendar else ctx.catalog.municipality.working_hours.hours_per_day
    days = hours / per_day if per_day else 0
    if category.sla_calendar:
        key, count = (N_("report.usual_days"), days) if hours >= 48 and days.is_integer() else \
            (N_("report.usual_hours"), hours)
    else:
        key, count = (N_("report.usual_workdays"), days) if days.is_integer() else (N_("report.usual_workhours"), hours)
    count = int(count) if float(count).is_integer() else round(count, 1)
    return ctx.t.n(key, count, n=count)


@router.state("report.duplicate", choice_only=True)
def report_duplicate(ctx: Ctx) -> None:
    codes = ctx.data.get("dups") or []
    reports = [r for r in (rp.get_by_code(ctx.db, c) for c in codes) if r is not None]
    if not ctx.data.get("dups_shown"):
        ctx.say(ctx.t("report.duplicate_intro"))
        for report in reports:
            text = _duplicate_text(ctx, report)
            photos = [p for p in (rp.shown_photo(m) for m in rp.media_of(ctx.db, report.id, kind="photo")) if p]
            ctx.say(text, photo_path=photos[0] if photos else "")
        ctx.data["dups_shown"] = True
    choices = [Choice(f"f:{r.code}", ctx.t("report.duplicate_follow", code=r.code)) for r in reports]
    choices += [Choice("file", ctx.t("report.duplicate_file")), Choice("back", ctx.t("report.duplicate_back"))]
    ctx.ask(ctx.t("report.duplicate_question"), choices)


def _duplicate_text(ctx: Ctx, report: rp.Report) -> str:
    d = ctx.data
    distance = ""
    if d.get("lat") is not None and report.latitude is not None:
        metres = rp.haversine_m(d["lat"], d["lon"], report.latitude, report.longitude)
        distance = ctx.t("report.duplicate_distance", meters=int(round(metres)))
    text = ctx.t("report.duplicate_item", code=report.code, category=category_name(ctx, report.category),
                 status=status_name(ctx, report.status), when=ctx.when(report.created_at),
                 location=location_text(ctx, None, None, report.mahalle, report.address), distance=distance,
                 supporters=report.supporters)
    if report.description and not report.erased_at:
        text += "\n" + ctx.t("report.detail_description", description=truncate(report.description, 300))
    return text


@report_duplicate.on_input
def on_report_duplicate(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.choice == "file":  # not the same problem: on with the resident's own report
        return _after(ctx, "report.describe")
    if msg.choice == "back":  # another place
        ctx.data.update(lat=None, lon=None, mahalle=None, street="", dups_checked=False, dups_shown=False)
        return Go("report.location", keep=True)
    code = msg.choice.removeprefix("f:")
    report = rp.get_by_code(ctx.db, code)
    if report is None:
        return Invalid("engine.stale_choice")
    _follow(ctx, report)
    d = ctx.data
    if d.get("description") or d.get("photos"):  # written already (a place changed from the summary)
        add_supporter_comment(ctx, report, d.get("description") or "", d.get("photos") or [])
        ctx.say(ctx.t("report.support_saved", code=report.code))
        return Go(IDLE)
    return Go("report.support", {"code": report.code, "photos": []})


def add_supporter_comment(ctx: Ctx, report: rp.Report, text: str, photos: list[dict[str, Any]]) -> None:
    """What a follower wrote and sent goes to staff with the followed report (domain.support)."""
    domain.support(ctx.db, Actor.resident(ctx.resident.id), report, text, photos[:MAX_PHOTOS], now=ctx.now)


@router.state("report.support", accepts={Kind.TEXT, Kind.PHOTO, Kind.CHOICE}, long_text=True)
def report_support(ctx: Ctx) -> None:
    n = len(ctx.data.get("photos") or [])
    done = N_("report.support_done") if n else N_("report.support_skip")
    ctx.ask(ctx.t("report.support_prompt", code=ctx.data.get("code", "")), [Choice("done", ctx.t(done))])


@report_support.on_input
def on_report_support(ctx: Ctx, msg: Inbound) -> Transition:
    """After following: what the resident would have written goes to staff with the report."""
    report = rp.get_by_code(ctx.db, ctx.data.get("code", ""))
    if report is None:
        return Go(IDLE)
    photos = list(ctx.data.get("photos") or [])
    if msg.kind == Kind.PHOTO:
        media = _media_ok(ctx, msg)
        if media is None:
            return Stay()
        if len(photos) < MAX_PHOTOS:
            photos.append({**media, "content_type": media["content_type"] or "image/jpeg"})
        ctx.data["photos"] = photos
        if not (msg.text or "").strip():
            ctx.ask(ctx.t("report.photo_saved", n=len(photos), max=MAX_PHOTOS) + "\n" + ctx.t("report.support_more"),
                    [Choice("done", ctx.t("report.support_done"))])
            return Stay()
    text = ""
    if msg.kind in (Kind.TEXT, Kind.PHOTO) and (msg.text or "").strip():
        if msg.kind == Kind.TEXT and says_done(ctx, msg.text):
            text = ""
        else:
            kept = usable_text(ctx, msg.text)
            if kept is None:
                return Invalid("report.describe_short")
            text = kept
    if text or photos:
        add_supporter_comment(ctx, report, text, photos)
        ctx.say(ctx.t("report.support_saved", code=report.code))
    return Go(IDLE)


def _follow(ctx: Ctx, report: rp.Report) -> None:
    if domain.follow(ctx.db, Actor.resident(ctx.resident.id), report, now=ctx.now):
        ctx.say(ctx.t("report.followed", code=report.code))
    else:
        ctx.say(ctx.t("report.already_following", code=report.code))


# ---------------------------------------------------------------- /bildirimlerim (/raporlarim)
@router.command("myreports", "bildirimlerim", "raporlarim", "myreports", menu=MINE_COMMAND, description=N_("report.command_mine"))
def cmd_myreports(ctx: Ctx, text: str) -> Transition:
    if ctx.resident.onboarded_at is None:
        return Go("onboarding.language", keep=True)
    found = CODE_RE.search((text or "").upper())
    if found:
        return _open_detail(ctx, found.group(1))
    return Go("report.mine", {"_page": 0})


def _open_detail(ctx: Ctx, code: str) -> Transition:
    report = rp.get_by_code(ctx.db, code)
    if report is None:
        ctx.say(ctx.t("report.unknown_code", code=code))
        return Go("report.mine", {"_page": 0}) if ctx.state != "report.mine" else Stay()
    return Go("report.detail", {"code": report.code, "_page": ctx.data.get("_page", 0)})


def _my_items(ctx: Ctx) -> list[Choice]:
    own = rp.list_for_resident(ctx.db, ctx.resident.id)
    followed = rp.followed_by(ctx.db, ctx.resident.id)
    rows = sorted([(r, False) for r in own] + [(r, True) for r in followed],
                  key=lambda x: (aware(x[0].created_at), x[0].id), reverse=True)
    return [Choice(f"r:{r.code}", ("👍 " if f else "") + f"{r.code} · {category_name(ctx, r.category)} · "
                   f"{status_name(ctx, r.status)}") for r, f in rows]


@router.state("report.mine")
def report_mine(ctx: Ctx) -> None:
    items = _my_items(ctx)
    if not items:
        ctx.ask(ctx.t("report.mine_empty", command="/" + REPORT_COMMAND.get(ctx.lang, "report")),
                [Choice("new", ctx.t("report.menu")), Choice("back", ctx.t("common.back"))])
        return
    ctx.ask(ctx.t("report.mine_title", n=len(items)),
            ctx.paged(items, ctx.data.get("_page", 0), [Choice("back", ctx.t("common.back"))]))


@report_mine.on_input
def on_report_mine(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        found = CODE_RE.search(msg.text.upper())
        if found:
            return _open_detail(ctx, found.group(1))
        return Invalid("report.mine_hint")
    if msg.choice == "back":
        return Go(IDLE)
    if msg.choice == "new":
        return cmd_report(ctx, "")
    return _open_detail(ctx, msg.choice.removeprefix("r:"))


@router.state("report.detail")
def report_detail(ctx: Ctx) -> None:
    report = rp.get_by_code(ctx.db, ctx.data.get("code", ""))
    if report is None:
        ctx.ask(ctx.t("report.unknown_code", code=ctx.data.get("code", "")), [Choice("list", ctx.t("report.back_to_list"))])
        return
    mine = report.resident_id == ctx.resident.id
    following = rp.is_following(ctx.db, report.id, ctx.resident.id)
    if (mine or following) and ctx.data.get("shown") != report.code:
        for photo in rp.media_of(ctx.db, report.id, kind="photo"):
            ctx.say("", photo_path=photo.path)
    ctx.data["shown"] = report.code
    ctx.ask(detail_text(ctx, report, with_description=mine), _detail_choices(ctx, report, mine, following))


def detail_text(ctx: Ctx, report: rp.Report, *, with_description: bool) -> str:
    lines = [ctx.t("report.detail", code=report.code, category=category_name(ctx, report.category),
                   status=status_name(ctx, report.status), created=ctx.when(report.created_at),
                   location=location_text(ctx, report.latitude, report.longitude, report.mahalle, report.address),
                   supporters=report.supporters)]
    if with_description and report.description:
        lines.append(ctx.t("report.detail_description", description=truncate(report.description, 600)))
    if report.status == "rejected" and report.reject_reason:
        lines.append(ctx.t("report.notify.reason", reason=report.reject_reason))
    if report.merged_into_id:
        target = rp.get_report(ctx.db, report.merged_into_id)
        if target is not None:
            lines.append(ctx.t("report.detail_merged", code=target.code))
    if with_description and report.rating:
        lines.append(ctx.t("report.detail_rating", rating=report.rating))
    lines.append(ctx.t("report.detail_history"))
    for event in rp.history_of(ctx.db, report.id):
        if event.kind not in ("created", "status", "reopened", "merged") or not event.to_status:
            continue
        line = ctx.t("report.history_line", when=ctx.when(event.at), status=status_name(ctx, event.to_status))
        if event.note and event.kind != "merged":
            line += f" — {truncate(event.note, 200)}"
        lines.append(line)
    return "\n".join(lines)


def _detail_choices(ctx: Ctx, report: rp.Report, mine: bool, following: bool) -> list[Choice]:
    """The page's buttons; a resolved report offers what its notification did, for as long as it
    applies: reopen it (within REOPEN_WINDOW) and, for the reporter who has not yet, rate it."""
    choices = []
    if not mine and not following and report.status in rp.OPEN_STATUSES:
        choices.append(Choice("follow", ctx.t("report.detail_follow")))
    if report.status == "resolved" and (mine or following):
        if mine and not report.rating:
            choices.append(Choice("rate", ctx.t("report.detail_rate")))
        resolved_at = aware(report.resolved_at or report.updated_at)
        if ctx.now - resolved_at <= rp.REOPEN_WINDOW:
            choices.append(Choice("reopen", ctx.t("report.detail_reopen")))
    return choices + [Choice("list", ctx.t("report.back_to_list")), Choice("menu", ctx.t("report.to_menu"))]


@report_detail.on_input
def on_report_detail(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.TEXT:
        found = CODE_RE.search(msg.text.upper())
        if found:
            return _open_detail(ctx, found.group(1))
        return Invalid("engine.choose")
    if msg.choice == "follow":
        report = rp.get_by_code(ctx.db, ctx.data.get("code", ""))
        if report is not None:
            _follow(ctx, report)
        return Go("report.detail", keep=True)
    if msg.choice == "rate":
        return Go("report.rate", {"code": ctx.data.get("code", "")})
    if msg.choice == "reopen":  # as the notification's "no, it goes on" button does
        on_resolved_answer(ctx, Inbound(channel=msg.channel, address=msg.address, kind=Kind.CHOICE,
                                        choice=f"{notify.RESOLVED_PREFIX}:no:{ctx.data.get('code', '')}"))
        return Go("report.detail", keep=True)
    if msg.choice == "list":
        return Go("report.mine", {"_page": ctx.data.get("_page", 0)})
    return Go(IDLE)


# ---------------------------------------------------------------- proactive buttons: solved? rating
def _answerable(ctx: Ctx, code: str) -> rp.Report | None:
    """The report a proactive button names, if this resident is its reporter or a follower."""
    report = rp.get_by_code(ctx.db, code)
    if report is None:
        ctx.replies.append(Outbound(text=ctx.t("report.unknown_code", code=code)))
        return None
    if ctx.resident.id not in rp.audience_of(ctx.db, report):
        ctx.replies.append(Outbound(text=ctx.t("report.not_yours", code=code)))
        return None
    return report


def rating_choices(ctx: Ctx, code: str) -> list[Choice]:
    return [Choice(f"{notify.RATING_PREFIX}:{n}:{code}", f"{n} ⭐") for n in range(1, 6)]


@router.global_choice(notify.RESOLVED_PREFIX)
def on_resolved_answer(ctx: Ctx, msg: Inbound) -> Transition:
    """rs:yes:CODE / rs:no:CODE from a "resolved" notification, whatever state the resident is in."""
    _, answer, code = (msg.choice.split(":", 2) + ["", ""])[:3]
    report = _answerable(ctx, code)
    if report is None:
        return Stay()
    if answer == "yes":
        if report.status != "resolved":
            ctx.replies.append(Outbound(text=ctx.t("report.reopen_not_resolved", code=code,
                                                   status=status_name(ctx, report.status))))
            return Stay()
        if ctx.state == IDLE:  # nothing in progress: a real state, so typed numbers work too
            return Go("report.rate", {"code": report.code})
        ctx.replies.append(Outbound(text=ctx.t("report.rate_prompt", code=report.code),
                                    choices=rating_choices(ctx, report.code), columns=5))
        return Stay()
    result = domain.reopen(ctx.db, Actor.resident(ctx.resident.id), report.code, now=ctx.now)
    if result == "reopened":
        text = ctx.t("report.reopened", code=report.code)
    elif result == "too_late":
        text = ctx.t("report.reopen_too_late", code=report.code, days=rp.REOPEN_WINDOW.days,
                     command="/" + REPORT_COMMAND.get(ctx.lang, "report"))
    else:
        text = ctx.t("report.reopen_not_resolved", code=report.code, status=status_name(ctx, report.status))
    ctx.replies.append(Outbound(text=text))
    return Stay()


@router.global_choice(notify.RATING_PREFIX)
def on_rating(ctx: Ctx, msg: Inbound) -> Transition:
    """rr:N:CODE: a 1-5 rating after a resident said the problem is solved."""
    _, value, code = (msg.choice.split(":", 2) + ["", ""])[:3]
    report = _answerable(ctx, code)
    if report is None or not value.isdigit() or not 1 <= int(value) <= 5:
        return Stay()
    try:
        domain.rate(ctx.db, Actor.resident(ctx.resident.id), report.code, int(value), now=ctx.now)
    except rp.ReportError as err:  # not resolved (any more): an old message's button
        ctx.replies.append(Outbound(text=ctx.t(err.key, **err.params, status=status_name(ctx, report.status))))
        return Go(IDLE) if ctx.state == "report.rate" else Stay()
    ctx.replies.append(Outbound(text=ctx.t("report.rated", rating=int(value), code=report.code)))
    return Go(IDLE) if ctx.state == "report.rate" else Stay()


@router.state("report.rate")
def report_rate(ctx: Ctx) -> None:
    code = ctx.data.get("code", "")
    ctx.ask(ctx.t("report.rate_prompt", code=code), rating_choices(ctx, code) + [
        Choice("skip", ctx.t("report.rate_skip"))], columns=5)


@report_rate.on_input
def on_report_rate(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind != Kind.CHOICE:
        return Invalid("report.rate_hint")
    if msg.choice == "skip":
        return Go(IDLE)
    return on_rating(ctx, msg)


# ---------------------------------------------------------------- a question from staff
@router.global_choice(triage.QUESTION_PREFIX)
def on_question_button(ctx: Ctx, msg: Inbound) -> Transition:
    """rq:CODE on staff's question: the resident's next text is their answer."""
    code = msg.choice.split(":", 1)[1] if ":" in msg.choice else ""
    report = triage.open_question(ctx.db, ctx.resident.id, code=code, now=ctx.now)
    if report is None:
        ctx.replies.append(Outbound(text=ctx.t("report.question.closed", code=code)))
        return Stay()
    return Go("report.answer", {"code": report.code})


@router.idle_text
def answer_at_menu(ctx: Ctx, msg: Inbound) -> Transition | None:
    """Free text at the menu right after staff asked a question: it is the answer."""
    if not rp.asked_since(ctx.reader, ctx.resident.id, ctx.now - triage.QUESTION_OPEN):
        return None
    report = triage.open_question(ctx.db, ctx.resident.id, now=ctx.now)
    if report is None:
        return None
    return _answered(ctx, report, msg.text)


@router.state("report.answer")
def report_answer(ctx: Ctx) -> None:
    ctx.ask(ctx.t("report.question.prompt", code=ctx.data.get("code", "")),
            [Choice("cancel", ctx.t("common.back"))])


@report_answer.on_input
def on_report_answer(ctx: Ctx, msg: Inbound) -> Transition:
    if msg.kind == Kind.CHOICE:
        return Go(IDLE)
    report = triage.open_question(ctx.db, ctx.resident.id, code=ctx.data.get("code", ""), now=ctx.now)
    if report is None:
        ctx.say(ctx.t("report.question.closed", code=ctx.data.get("code", "")))
        return Go(IDLE)
    return _answered(ctx, report, msg.text)


def _answered(ctx: Ctx, report: rp.Report, text: str) -> Transition:
    triage.record_answer(ctx.db, ctx.resident.id, report, truncate(text.strip(), MAX_DESCRIPTION), now=ctx.now)
    ctx.say(ctx.t("report.question.thanks", code=report.code))
    return Go(IDLE)
