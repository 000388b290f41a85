"""Open311 GeoReport v2 (https://wiki.open311.org/GeoReport_v2) for the municipality's CRM and apps,
under /open311/v2/ on the HTTP server.

    GET  services.json | .xml                  the catalog's categories (service_code = category key)
    GET  services/{service_code}.json          a service definition (no extra attributes: metadata false)
    GET  requests.json | .xml                  reports, with the standard filters
    GET  requests/{service_request_id}.json | .xml
    POST requests.json                         a new report (form-encoded as in the spec, or JSON), api_key required
    GET  media/{service_request_id}/{token}    a report's photo, from MEDIA_DIR (a key of scope full)

Choices:
- service_request_id is the tracking code (BCA-2026-000123). Status: new, seen and in_progress are
  "open"; resolved, rejected and merged are "closed". Times are ISO 8601 in the municipality's time
  zone; a start_date/end_date without an offset is read in that time zone too.
- What a reader sees depends on its API key (`api_key` query parameter or `X-Api-Key` header):
  without a key, or with a key of scope "public", a request shows its category, status, the status
  notes staff write for the public, its dates and a coarse location: the mahalle (address_id, and
  its name as address) and the pin rounded to COARSE_DECIMALS (3: about 100 m). Never the
  resident's description, the street they typed, the exact pin or photos (media_url is absent).
  A key of scope "full" (`katilim apikey add NAME --scope full`) also gets the description, the
  exact pin, the address as given and media_url; every such request writes one audit row
  (actor "open311:<key name>", action open311.full_read or open311.media_read, the codes read:
  no personal data), and is sent with Cache-Control: private, no-store. An unknown or revoked
  key is refused (403), never treated as no key.
- status_notes, the notes meant for the public: a rejected report's reason, "merged into CODE",
  else the note staff wrote with the change to the current status (the note the reporter and
  followers were sent). A resident's words (a reopening's reason, a rating) are never shown.
- Nothing identifying a resident is ever returned: no resident id, name, phone or channel. Voice
  notes are never served (a voice identifies a person); only photos, and only to a full key, by a
  random token per photo (report_media.token), so they cannot be enumerated. Tracking codes stay
  sequential: they are the public id of a report and reveal nothing the public feed does not.
- POST requests.json is budgeted per key (OPEN311_POSTS_PER_MINUTE, bursts of OPEN311_POSTS_BURST)
  and across all keys (OPEN311_POSTS_PER_MINUTE_TOTAL, OPEN311_POSTS_BURST_TOTAL), in the database
  (storage/quota.py: shared by every worker); beyond: 429 with Retry-After. Every authenticated
  POST counts, valid or not.
- KVKK data minimisation: a POST's first_name, last_name, email, phone, device_id and account_id are
  accepted (clients send them) and discarded: they are not stored, not logged, not put in a note.
  The CRM that collected them is their controller and can reach the person; this service only needs
  the problem. The report is created with no resident (resident_id None), channel "open311" and actor
  "open311:<key name>"; it goes to staff triage like any other report. Nobody is notified of its
  status changes here (the client polls requests.json).
- address_id is the catalog's mahalle key (the only addressing system we have).
- A POST's media_url (a link to the client's copy of a photo) is kept in open311_request and returned
  to full keys as the request's media_url when the report has no photo of its own; it is not
  downloaded (this server never fetches URLs a client chooses).
- Errors: [{"code": 400, "description": "..."}] (or <errors> for .xml) with that HTTP status:
  400 missing or invalid parameter, 403 missing, unknown or revoked api_key (or one without the
  scope needed), 404 unknown service_request_id or service_code, 429 over the POST budget (with
  Retry-After). Error descriptions are for the client's developers, in English; service names
  and notices follow `locale` or Accept-Language (tr, en, ar; Turkish by default).
"""
from __future__ import annotations

import json
import logging
import math
import re
import urllib.parse
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, NamedTuple, Optional
from xml.etree import ElementTree as ET
from zoneinfo import ZoneInfo

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import false
from sqlmodel import Session, select

from conversations.domain import reports as domain
from conversations.i18n import LANGUAGES, t_in
from conversations.permissions import Actor
from handlers.files import IMAGE_TYPES, stored_file
from handlers.kit import read_body
from storage import apikeys, quota
from storage import open311 as open311_requests
from storage.apikeys import ApiKey
from storage.audit import audit
from storage.db import aware, transaction, utcnow
from storage.reports import CLOSED_STATUSES, OPEN_STATUSES, Report, ReportEvent, ReportMedia, shown_photo

log = logging.getLogger(__name__)

PREFIX = "/open311/v2"
DEFAULT_WINDOW = timedelta(days=90)  # the spec's default window, and the longest start..end span
MAX_PAGE_SIZE = 1000
MAX_DESCRIPTION = 4000  # the spec's limit
MAX_BODY = 256 * 1024
CODE_RE = re.compile(r"^[A-Z]{2,6}-\d{4}-\d{6,9}$")
NUMBER_FIELDS = ("lat", "long")
COARSE_DECIMALS = 3  # the public pin: rounded to about 100 m
AUDITED_CODES = 100  # an audit row of a full read lists at most this many codes (and their count)
TOKEN_RE = r"^[A-Za-z0-9_-]{16,43}$"
# A full read holds personal data: no cache (a proxy's, a browser's) may keep it.
FULL_READ_HEADERS = {"Cache-Control": "private, no-store"}
DISCARDED_FIELDS = ("first_name", "last_name", "email", "phone", "device_id", "account_id")


def _iso_datetime(value: Any) -> Any:
    """Only ISO 8601 text (pydantic alone would also take a number as a Unix time)."""
    if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value.strip()):
        return value.strip()
    if isinstance(value, datetime):
        return value
    raise ValueError("expected an ISO 8601 date-time, e.g. 2026-11-24T18:00:00+03:00")


IsoDateTime = Annotated[datetime, BeforeValidator(_iso_datetime)]


# ---------------------------------------------------------------- response models (the OpenAPI document)
class Open311ErrorItem(BaseModel):
    code: int = Field(description="the HTTP status")
    description: str


class Service(BaseModel):
    service_code: str = Field(description="the catalog's category key")
    service_name: str
    description: str
    metadata: bool = Field(description="always false: no extra attributes to fill in")
    type: Literal["realtime", "batch", "blackbox"]
    keywords: str = Field(description="comma-separated: the service's name in every language")
    group: str


class ServiceDefinition(BaseModel):
    service_code: str
    attributes: list[dict[str, Any]]


class ServiceRequest(BaseModel):
    service_request_id: str = Field(description="the tracking code, e.g. BCA-2026-000123")
    status: Literal["open", "closed"]
    status_notes: Optional[str] = None
    service_name: Optional[str] = None
    service_code: str
    description: Optional[str] = None
    agency_responsible: Optional[str] = None
    service_notice: Optional[str] = None
    requested_datetime: datetime
    updated_datetime: Optional[datetime] = None
    expected_datetime: Optional[datetime] = None
    address: Optional[str] = None
    address_id: Optional[str] = Field(default=None, description="the mahalle key")
    zipcode: Optional[str] = None
    lat: Optional[float] = None
    long: Optional[float] = None
    media_url: Optional[str] = None


class CreatedRequest(BaseModel):
    service_request_id: str
    service_notice: Optional[str] = None


class NewRequest(BaseModel):
    """The POST body: application/x-www-form-urlencoded as in the spec, or a JSON object."""

    model_config = ConfigDict(title="NewServiceRequest")
    api_key: str = Field(description="a key from `katilim apikey add NAME`")
    service_code: str
    lat: Optional[float] = Field(default=None, ge=-90, le=90, description="with long; or address_string / address_id")
    long: Optional[float] = Field(default=None, ge=-180, le=180)
    address_string: Optional[str] = Field(default=None, max_length=255)
    address_id: Optional[str] = Field(default=None, description="a mahalle key of the catalog")
    description: Optional[str] = Field(default=None, max_length=MAX_DESCRIPTION)
    media_url: Optional[str] = Field(default=None, max_length=1000, pattern=r"^https?://\S+$",
                                     description="http(s) link to a photo (kept as a link, not downloaded)")
    jurisdiction_id: Optional[str] = None
    first_name: Optional[str] = Field(default=None, description="accepted and discarded (KVKK data minimisation)")
    last_name: Optional[str] = Field(default=None, description="accepted and discarded")
    email: Optional[str] = Field(default=None, description="accepted and discarded")
    phone: Optional[str] = Field(default=None, description="accepted and discarded")
    device_id: Optional[str] = Field(default=None, description="accepted and discarded")
    account_id: Optional[str] = Field(default=None, description="accepted and discarded")


def _errors_doc(*codes: int, xml: bool = False) -> dict:
    meaning = {400: "a missing or invalid parameter",
               403: "a missing, unknown or revoked api_key, or one without the scope this needs",
               404: "an unknown service_request_id or service_code",
               429: "over the POST budget of the key or of all keys: retry after Retry-After seconds"}
    if xml:
        shape: dict[str, Any] = {"content": {"application/xml": {"schema": {"type": "string"}}}}
    else:
        shape = {"model": list[Open311ErrorItem]}
    doc: dict[Any, Any] = {code: {**shape, "description": meaning[code]} for code in codes}
    if 429 in doc:
        doc[429]["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    # Any other client error has the same shape (and keeps FastAPI from documenting a 422 we never send).
    doc["4XX"] = {**shape, "description": "an error, in the Open311 format"}
    return doc


def _without_nulls(schema: dict[str, Any]) -> dict[str, Any]:
    """The form-encoded variant of a body schema: a form has no null, an optional field is left out."""
    properties = {}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        branches = prop.pop("anyOf", None)
        if branches:
            [kept] = [b for b in branches if b.get("type") != "null"]
            prop.update(kept)
        prop.pop("default", None)
        properties[name] = prop
    return {**schema, "properties": properties}


# ---------------------------------------------------------------- errors
class Open311Error(Exception):
    def __init__(self, status: int, description: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.headers = headers


def error_response(path: str, status: int, description: str, headers: dict[str, str] | None = None) -> Response:
    if path.endswith(".xml"):
        root = ET.Element("errors")
        item = ET.SubElement(root, "error")
        ET.SubElement(item, "code").text = str(status)
        ET.SubElement(item, "description").text = _xml_safe(description)
        return XMLResponse(_xml_bytes(root), status_code=status, headers=headers)
    return JSONResponse([{"code": status, "description": description}], status_code=status, headers=headers)


def _describe(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = [str(p) for p in err.get("loc", ()) if p not in ("query", "path", "body", "header")]
        parts.append(f"{'.'.join(loc) or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class Open311Route(APIRoute):
    """Turns validation errors and Open311Error into the Open311 error format (only for these routes)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return error_response(request.url.path, 400, _describe(exc))
            except Open311Error as exc:
                return error_response(request.url.path, exc.status, exc.description, exc.headers)

        return route


class XMLResponse(Response):
    media_type = "application/xml"


# ---------------------------------------------------------------- helpers
def pick_locale(locale: str | None, accept_language: str | None) -> str:
    """`locale` (tr, en-US, ar_EG...), else the best of Accept-Language, else Turkish."""
    def base(tag: str) -> str:
        return re.split(r"[-_]", tag.strip().lower(), maxsplit=1)[0]

    if locale and base(locale) in LANGUAGES:
        return base(locale)
    ranked = []
    for i, part in enumerate((accept_language or "").split(",")[:20]):
        tag, _, params = part.partition(";")
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                q = float(match.group(1))
            except ValueError:
                q = 0.0
        if base(tag) in LANGUAGES and q > 0:
            ranked.append((-q, i, base(tag)))
    return min(ranked)[2] if ranked else "tr"


def _xml_safe(text: str) -> str:
    return re.sub(r"[^\x09\x0A\x0D\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]", "", text)


def _xml_bytes(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def to_xml(root_tag: str, item_tag: str, items: list[dict[str, Any]]) -> bytes:
    root = ET.Element(root_tag)
    for data in items:
        item = ET.SubElement(root, item_tag)
        for key, value in data.items():
            el = ET.SubElement(item, key)
            if value is None:
                continue
            if isinstance(value, bool):
                el.text = "true" if value else "false"
            elif isinstance(value, datetime):
                el.text = value.isoformat()
            else:
                el.text = _xml_safe(str(value))
    return _xml_bytes(root)


def _clean(value: Any, name: str, max_length: int) -> str | None:
    """A text parameter of the POST: str (numbers allowed from JSON), NUL removed, length checked."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Open311Error(400, f"{name} must be a string")
    text = str(value).replace("\x00", "").strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Open311Error(400, f"{name} is not valid UTF-8 text") from None
    if len(text) > max_length:
        raise Open311Error(400, f"{name} is longer than {max_length} characters")
    return text or None


def _coordinate(value: Any, name: str, limit: float) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise Open311Error(400, f"{name} must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Open311Error(400, f"{name} must be a number") from None
    if not math.isfinite(number) or not -limit <= number <= limit:
        raise Open311Error(400, f"{name} must be between -{limit:g} and {limit:g}")
    return number


async def _read_body(request: Request) -> bytes:
    """The body, refused beyond MAX_BODY without reading the rest."""
    body = await read_body(request, MAX_BODY)
    if body is None:
        raise Open311Error(400, f"the request body is larger than {MAX_BODY} bytes")
    return body


# ---------------------------------------------------------------- the API
def _actor(key: ApiKey) -> str:
    return Actor.open311(key.name).who


class Read(NamedTuple):
    requests: list[ServiceRequest]
    full: bool  # read with a key of scope full: every detail (FULL_READ_HEADERS)

    @property
    def headers(self) -> dict[str, str] | None:
        return FULL_READ_HEADERS if self.full else None


class Open311:
    def __init__(self, app) -> None:
        self.app = app
        self.settings = app.settings
        self.catalog = app.catalog  # bot/catalog.py's Catalog
        self.tz = ZoneInfo(self.catalog.municipality.timezone or app.settings.timezone)
        self.prefix = self.catalog.municipality.tracking_prefix

    # ---- services
    def services(self, lang: str) -> list[Service]:
        municipality = self.catalog.municipality.name.get(lang)
        return [Service(service_code=c.key, service_name=c.name.get(lang),
                        description=t_in(lang, "open311.service_description", name=c.name.get(lang),
                                         municipality=municipality),
                        metadata=False, type="realtime", keywords=", ".join(dict.fromkeys(c.name.all_forms())),
                        group=t_in(lang, "open311.group"))
                for c in self.catalog.categories]

    def require_service(self, code: str) -> None:
        if self.catalog.category(code) is None:
            raise Open311Error(404, f"unknown service_code {code[:64]!r}")

    # ---- requests
    def _local(self, dt: datetime | None) -> datetime | None:
        return aware(dt).astimezone(self.tz) if dt else None

    def _to_utc(self, dt: datetime, name: str) -> datetime:
        try:
            return (dt if dt.tzinfo else dt.replace(tzinfo=self.tz)).astimezone(timezone.utc)
        except (OverflowError, ValueError):
            raise Open311Error(400, f"{name} is out of range") from None

    def _media_url(self, report: Report, media: ReportMedia) -> str:
        return f"{self.settings.public_base_url}{PREFIX}/media/{report.code}/{media.token}"

    # ---- who reads
    def reader(self, db: Session, plain: str | None) -> ApiKey | None:
        """The key a read presents (None: no key, the public view); 403 for an unknown or revoked
        one (a client that sent a key expects what it grants, not a silently smaller view)."""
        if plain is None or not plain.strip():
            return None
        key = apikeys.authenticate(db, plain.strip())
        if key is None:
            raise Open311Error(403, "api_key is unknown or revoked")
        return key

    def render(self, db: Session, reports: list[Report], lang: str, *, full: bool = False) -> list[ServiceRequest]:
        """Reports as Open311 requests: the public view, or with `full` every detail (see the
        module's docstring)."""
        ids = [r.id for r in reports]
        photos: dict[int, ReportMedia] = {}
        notes: dict[int, ReportEvent] = {}
        merged_codes: dict[int, str] = {}
        if ids:
            for media in db.exec(select(ReportMedia).where(ReportMedia.report_id.in_(ids), ReportMedia.kind == "photo",
                                                    ReportMedia.hidden.is_(False)).order_by(ReportMedia.id)):
                photos.setdefault(media.report_id, media)
            for event in db.exec(select(ReportEvent).where(ReportEvent.report_id.in_(ids), ReportEvent.kind == "status")
                                 .order_by(ReportEvent.id)):
                notes[event.report_id] = event  # the last one wins
            targets = {r.merged_into_id for r in reports if r.merged_into_id}
            if targets:
                codes = dict(db.exec(select(Report.id, Report.code).where(Report.id.in_(targets))).all())
                merged_codes = {r.id: codes.get(r.merged_into_id, "") for r in reports if r.merged_into_id}
        submitted = open311_requests.requests_for(db, ids)
        agency = self.catalog.municipality.name.get(lang)
        out = []
        for r in reports:
            category = self.catalog.category(r.category)
            hood = self.catalog.neighbourhood(r.mahalle) if r.mahalle else None
            if r.status == "rejected" and r.reject_reason:
                note = r.reject_reason
            elif r.status == "merged" and merged_codes.get(r.id):
                note = t_in(lang, "open311.merged_into", code=merged_codes[r.id])
            else:
                event = notes.get(r.id)
                note = event.note if event is not None and event.to_status == r.status and event.note else None
            if not full:
                media_url = None
            elif r.id in photos:
                media_url = self._media_url(r, photos[r.id])
            elif r.id in submitted and submitted[r.id].media_url:
                media_url = submitted[r.id].media_url
            else:
                media_url = None
            lat, lon = r.latitude, r.longitude
            if not full and lat is not None and lon is not None:
                lat, lon = round(lat, COARSE_DECIMALS), round(lon, COARSE_DECIMALS)
            out.append(ServiceRequest(
                service_request_id=r.code,
                status="open" if r.status in OPEN_STATUSES else "closed",
                status_notes=note,
                service_name=category.name.get(lang) if category else r.category,
                service_code=r.category,
                description=(r.description or None) if full else None,
                agency_responsible=agency,
                service_notice=None,
                requested_datetime=self._local(r.created_at),
                updated_datetime=self._local(r.updated_at),
                expected_datetime=None,
                address=(r.address if full else "") or (hood.name if hood else None),
                address_id=r.mahalle,
                zipcode=None,
                lat=lat,
                long=lon,
                media_url=media_url,
            ))
        return out

    def _read(self, plain: str | None, path: str, lang: str, fetch: Callable[[Session], list[Report]],
              **filters: Any) -> Read:
        """One read: the key checked, the reports fetched and rendered for it, and, for a full key,
        one audit row naming what was read, all in one transaction."""
        with transaction(self.app.db) as db:
            key = self.reader(db, plain)
            reports = fetch(db)
            full = key is not None and key.full
            found = self.render(db, reports, lang, full=full)
            if full:
                codes = [r.code for r in reports]
                audit(db, _actor(key), "open311.full_read", path, count=len(codes),
                           codes=codes[:AUDITED_CODES], **{k: v for k, v in filters.items() if v is not None})
        if full:
            log.info("open311: full read of %d requests by key %s", len(found), key.prefix)
        return Read(found, full)

    def find(self, *, lang: str, service_request_id: str | None, service_code: str | None,
             start_date: datetime | None, end_date: datetime | None, status: str | None,
             page: int, page_size: int, api_key: str | None = None, path: str = "") -> Read:
        query = select(Report)
        if service_request_id:
            # "This overrides all other arguments" (the spec).
            codes = {c.strip().upper() for c in service_request_id.split(",")}
            codes = [c for c in codes if CODE_RE.match(c)][:MAX_PAGE_SIZE]
            query = query.where(Report.code.in_(codes) if codes else false())
        else:
            if service_code:
                wanted = [c.strip() for c in service_code.split(",") if c.strip()]
                for code in wanted:
                    self.require_service(code)
                if wanted:
                    query = query.where(Report.category.in_(wanted))
            if status:
                statuses: list[str] = []
                for part in status.split(","):
                    part = part.strip().lower()
                    if part == "open":
                        statuses += OPEN_STATUSES
                    elif part == "closed":
                        statuses += CLOSED_STATUSES
                    elif part:
                        raise Open311Error(400, "status must be open, closed or open,closed")
                if statuses:
                    query = query.where(Report.status.in_(statuses))
            start = self._to_utc(start_date, "start_date") if start_date else None
            end = self._to_utc(end_date, "end_date") if end_date else None
            try:
                if start is None and end is None:
                    end = utcnow()
                    start = end - DEFAULT_WINDOW
                elif start is None:
                    start = end - DEFAULT_WINDOW
                elif end is None:
                    end = start + DEFAULT_WINDOW
            except OverflowError:
                raise Open311Error(400, "start_date or end_date is out of range") from None
            if start > end:
                raise Open311Error(400, "start_date is after end_date")
            if end - start > DEFAULT_WINDOW:
                raise Open311Error(400, "start_date and end_date may not span more than 90 days")
            query = query.where(Report.created_at >= start, Report.created_at <= end)
        query = query.order_by(Report.created_at.desc(), Report.id.desc())
        query = query.offset((page - 1) * page_size).limit(page_size)
        return self._read(api_key, path, lang, lambda db: list(db.exec(query)), service_request_id=service_request_id,
                          service_code=service_code, status=status, page=page, page_size=page_size,
                          start_date=start_date.isoformat() if start_date else None,
                          end_date=end_date.isoformat() if end_date else None)

    def one(self, code: str, lang: str, *, api_key: str | None = None, path: str = "") -> Read:
        code = code.strip().upper()
        found = self._read(api_key, path, lang, lambda db: list(db.exec(select(Report).where(Report.code == code)))
                           if CODE_RE.match(code) else [])
        if not found.requests:
            raise Open311Error(404, f"unknown service_request_id {code[:40]!r}")
        return found

    def photo(self, code: str, token: str, plain: str | None) -> Response:
        """A report's photo, for a key of scope full (audited); 403 before anything is looked up."""
        code = code.strip().upper()
        with transaction(self.app.db) as db:
            key = self.reader(db, plain)
            if key is None or not key.full:
                raise Open311Error(403, "photos need an api_key of scope full")
            media = db.exec(select(ReportMedia).where(ReportMedia.token == token)).first()
            report = db.get(Report, media.report_id) if media is not None else None
            if report is None or report.code != code or media.kind != "photo" or not shown_photo(media):
                raise Open311Error(404, "no such photo")  # hidden by staff: as if it never was
            root = Path(self.settings.media_dir).resolve()
            path = Path(shown_photo(media))  # a blurred photo: its blurred copy
            path = (path if path.is_absolute() else Path.cwd() / path).resolve()
            response = stored_file(path, allowed=IMAGE_TYPES) if path.is_relative_to(root) else None
            if response is None:  # outside MEDIA_DIR, gone, or not an image
                raise Open311Error(404, "no such photo")
            audit(db, _actor(key), "open311.media_read", report.code, media=media.id)
        return response

    # ---- create
    async def submit(self, request: Request, lang: str) -> CreatedRequest:
        body = await _read_body(request)
        fields = await self._fields(request, body)
        # The key first: an unauthenticated client learns nothing else.
        plain = fields.get("api_key") or request.headers.get("x-api-key")
        if not isinstance(plain, str) or not plain.strip():
            raise Open311Error(403, "api_key is required")
        return await run_in_threadpool(self._create, fields, plain.strip(), lang)

    def _spend(self, db: Session, key: ApiKey) -> None:
        """One POST of the key's budget and of all keys' budget, or 429 (nothing spent: the
        caller's transaction is rolled back)."""
        s = self.settings
        refused = quota.spend(db, [(f"open311:key:{key.id}", s.open311_posts_per_minute, s.open311_posts_burst),
                                   ("open311:all", s.open311_posts_per_minute_total, s.open311_posts_burst_total)])
        if refused is not None:
            whose = ("this api_key", "all clients")[refused[0]]
            seconds = max(1, math.ceil(refused[1]))
            log.warning("open311: POST by key %s refused, over the budget of %s (retry in %ds)",
                        key.prefix, whose, seconds)
            raise Open311Error(429, f"too many requests for {whose}: retry after {seconds} s",
                               headers={"Retry-After": str(seconds)})

    async def _fields(self, request: Request, body: bytes) -> dict[str, Any]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                data = json.loads(body or b"null")
            except (ValueError, UnicodeDecodeError):
                raise Open311Error(400, "the body is not valid JSON") from None
            if not isinstance(data, dict):
                raise Open311Error(400, "the JSON body must be an object")
            for name, value in data.items():  # the documented types, strictly (a form has only strings)
                if name in NUMBER_FIELDS:
                    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                        raise Open311Error(400, f"{name} must be a number")
                elif name in NewRequest.model_fields and value is not None and not isinstance(value, str):
                    raise Open311Error(400, f"{name} must be a string")
            return data
        if ctype == "multipart/form-data":
            async def replay() -> dict:
                return {"type": "http.request", "body": body, "more_body": False}

            try:
                form = await Request(request.scope, replay).form()
            except Exception:  # noqa: BLE001  (malformed multipart)
                raise Open311Error(400, "the multipart body cannot be read") from None
            return {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if ctype in ("application/x-www-form-urlencoded", ""):
            try:
                pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
            except (UnicodeDecodeError, ValueError):
                raise Open311Error(400, "the form body cannot be read") from None
            return dict(pairs)
        raise Open311Error(400, "send application/x-www-form-urlencoded (or JSON)")

    def _create(self, fields: dict[str, Any], plain: str, lang: str) -> CreatedRequest:
        for name in DISCARDED_FIELDS:  # KVKK: never stored (see the module's docstring)
            fields.pop(name, None)
        refused: Open311Error | None = None
        with transaction(self.app.db) as db:
            key = apikeys.authenticate(db, plain)
            if key is None:
                raise Open311Error(403, "api_key is unknown or revoked")
            self._spend(db, key)
            try:
                tracking = self._insert(db, fields, key)
            except Open311Error as exc:
                refused = exc  # an invalid POST counts against the budget too (committed here)
        if refused is not None:
            raise refused
        log.info("open311: %s created by key %s", tracking, key.prefix)
        return CreatedRequest(service_request_id=tracking,
                              service_notice=t_in(lang, "open311.notice_received", code=tracking))

    def _insert(self, db: Session, fields: dict[str, Any], key: ApiKey) -> str:
        """The report a POST describes (validated), in the caller's transaction; its tracking code."""
        code = _clean(fields.get("service_code"), "service_code", 64)
        if not code:
            raise Open311Error(400, "service_code is required")
        self.require_service(code)
        lat = _coordinate(fields.get("lat"), "lat", 90)
        lon = _coordinate(fields.get("long"), "long", 180)
        if (lat is None) != (lon is None):
            raise Open311Error(400, "lat and long go together")
        address = _clean(fields.get("address_string"), "address_string", 255)
        address_id = _clean(fields.get("address_id"), "address_id", 64)
        if address_id and self.catalog.neighbourhood(address_id) is None:
            raise Open311Error(400, "address_id must be a mahalle key of the catalog")
        if lat is None and not address and not address_id:
            raise Open311Error(400, "a location is required: lat and long, address_string or address_id")
        description = _clean(fields.get("description"), "description", MAX_DESCRIPTION) or ""
        media_url = _clean(fields.get("media_url"), "media_url", 1000)
        if media_url and not re.match(r"^https?://[^\s/]+\S*$", media_url):
            raise Open311Error(400, "media_url must be an http:// or https:// URL")
        report = domain.file(db, Actor.open311(key.name), prefix=self.prefix, category=code, description=description,
                             latitude=lat, longitude=lon, mahalle=address_id, address=address or "",
                             channel="open311", catalog=self.catalog)
        open311_requests.record_request(db, report.id, key, media_url or "")
        return report.code


# ---------------------------------------------------------------- routes
LOCALE_QUERY = Query(None, description="tr, en or ar (default: Accept-Language, else tr)", max_length=35)
JURISDICTION_QUERY = Query(None, description="ignored: this server has one jurisdiction", max_length=200)
CODE_PATH = PathParam(description="the tracking code, e.g. BCA-2026-000123", max_length=40)
KEY_QUERY = Query(None, max_length=200, description="an API key (`katilim apikey add`); scope full shows every "
                  "detail and is audited; without a key, or with scope public, the public view")
KEY_HEADER = Header(None, alias="X-Api-Key", max_length=200, description="the API key, instead of api_key")


def build_router(app) -> APIRouter:
    api = Open311(app)
    router = APIRouter(prefix=PREFIX, tags=["Open311 GeoReport v2"], route_class=Open311Route)

    def lang_of(request: Request, locale: str | None) -> str:
        return pick_locale(locale, request.headers.get("accept-language"))

    @router.get("/services.json", response_model=list[Service], responses=_errors_doc(400),
                summary="Service list: the catalog's categories")
    def services_json(request: Request, locale: Optional[str] = LOCALE_QUERY,
                      jurisdiction_id: Optional[str] = JURISDICTION_QUERY):
        return api.services(lang_of(request, locale))

    @router.get("/services.xml", response_class=XMLResponse, responses=_errors_doc(400, xml=True),
                summary="Service list (XML)")
    def services_xml(request: Request, locale: Optional[str] = LOCALE_QUERY,
                     jurisdiction_id: Optional[str] = JURISDICTION_QUERY):
        items = [s.model_dump() for s in api.services(lang_of(request, locale))]
        return XMLResponse(to_xml("services", "service", items))

    @router.get("/services/{service_code}.json", response_model=ServiceDefinition,
                responses=_errors_doc(400, 404), summary="Service definition (no extra attributes)")
    def service_definition(service_code: str = PathParam(max_length=64),
                           jurisdiction_id: Optional[str] = JURISDICTION_QUERY):
        api.require_service(service_code)
        return ServiceDefinition(service_code=service_code, attributes=[])

    def search(request: Request, locale, service_request_id, service_code, start_date, end_date, status,
               page, page_size, api_key, x_api_key):
        return api.find(lang=lang_of(request, locale), service_request_id=service_request_id,
                        service_code=service_code, start_date=start_date, end_date=end_date, status=status,
                        page=page, page_size=page_size, api_key=api_key or x_api_key, path=request.url.path)

    search_params = dict(
        service_request_id=Query(None, max_length=4000,
                                 description="comma-separated tracking codes; overrides every other filter"),
        service_code=Query(None, max_length=400, description="a service_code (or several, comma-separated)"),
        start_date=Query(None, description="ISO 8601; without an offset, in the municipality's time zone"),
        end_date=Query(None, description="ISO 8601; default: now, or start_date + 90 days"),
        status=Query(None, max_length=20, description="open, closed or open,closed"),
        page=Query(1, ge=1, le=100_000, description="1, 2, ... (an extension: pages of page_size)"),
        page_size=Query(MAX_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE, description="at most 1000 (an extension)"),
    )

    @router.get("/requests.json", response_model=list[ServiceRequest], responses=_errors_doc(400, 403, 404),
                summary="Service requests (default: the last 90 days, newest first)")
    def requests_json(request: Request, response: Response, locale: Optional[str] = LOCALE_QUERY,
                      service_request_id: Optional[str] = search_params["service_request_id"],
                      service_code: Optional[str] = search_params["service_code"],
                      start_date: Optional[IsoDateTime] = search_params["start_date"],
                      end_date: Optional[IsoDateTime] = search_params["end_date"],
                      status: Optional[str] = search_params["status"],
                      page: int = search_params["page"], page_size: int = search_params["page_size"],
                      jurisdiction_id: Optional[str] = JURISDICTION_QUERY, api_key: Optional[str] = KEY_QUERY,
                      x_api_key: Optional[str] = KEY_HEADER):
        found = search(request, locale, service_request_id, service_code, start_date, end_date, status,
                       page, page_size, api_key, x_api_key)
        response.headers.update(found.headers or {})
        return found.requests

    @router.get("/requests.xml", response_class=XMLResponse, responses=_errors_doc(400, 403, 404, xml=True),
                summary="Service requests (XML)")
    def requests_xml(request: Request, locale: Optional[str] = LOCALE_QUERY,
                     service_request_id: Optional[str] = search_params["service_request_id"],
                     service_code: Optional[str] = search_params["service_code"],
                     start_date: Optional[IsoDateTime] = search_params["start_date"],
                     end_date: Optional[IsoDateTime] = search_params["end_date"],
                     status: Optional[str] = search_params["status"],
                     page: int = search_params["page"], page_size: int = search_params["page_size"],
                     jurisdiction_id: Optional[str] = JURISDICTION_QUERY, api_key: Optional[str] = KEY_QUERY,
                     x_api_key: Optional[str] = KEY_HEADER):
        found = search(request, locale, service_request_id, service_code, start_date, end_date, status,
                       page, page_size, api_key, x_api_key)
        return XMLResponse(to_xml("service_requests", "request", [r.model_dump() for r in found.requests]),
                           headers=found.headers)

    # The document lists this catalog's service codes and mahalle keys.
    body_schema = NewRequest.model_json_schema()
    body_schema["properties"]["service_code"]["enum"] = [c.key for c in app.catalog.categories]
    for branch in body_schema["properties"]["address_id"]["anyOf"]:
        if branch.get("type") == "string":
            branch["enum"] = [n.key for n in app.catalog.neighbourhoods]
    # A location is required: lat and long, or address_string, or address_id.
    body_schema["anyOf"] = [{"required": ["lat", "long"]}, {"required": ["address_string"]},
                            {"required": ["address_id"]}]
    body_schema["dependentRequired"] = {"lat": ["long"], "long": ["lat"]}

    @router.post("/requests.json", status_code=201, response_model=list[CreatedRequest],
                 responses=_errors_doc(400, 403, 404, 429), summary="Create a service request (api_key required)",
                 openapi_extra={"requestBody": {"required": True, "content": {
                     "application/x-www-form-urlencoded": {"schema": _without_nulls(body_schema)},
                     "application/json": {"schema": body_schema}}}})
    async def create_request(request: Request, locale: Optional[str] = LOCALE_QUERY):
        return [await api.submit(request, lang_of(request, locale))]

    @router.get("/requests/{service_request_id}.json", response_model=list[ServiceRequest],
                responses=_errors_doc(400, 403, 404), summary="One service request")
    def request_json(request: Request, response: Response, service_request_id: str = CODE_PATH,
                     locale: Optional[str] = LOCALE_QUERY,
                     jurisdiction_id: Optional[str] = JURISDICTION_QUERY, api_key: Optional[str] = KEY_QUERY,
                     x_api_key: Optional[str] = KEY_HEADER):
        found = api.one(service_request_id, lang_of(request, locale), api_key=api_key or x_api_key,
                        path=request.url.path)
        response.headers.update(found.headers or {})
        return found.requests

    @router.get("/requests/{service_request_id}.xml", response_class=XMLResponse,
                responses=_errors_doc(400, 403, 404, xml=True), summary="One service request (XML)")
    def request_xml(request: Request, service_request_id: str = CODE_PATH, locale: Optional[str] = LOCALE_QUERY,
                    jurisdiction_id: Optional[str] = JURISDICTION_QUERY, api_key: Optional[str] = KEY_QUERY,
                    x_api_key: Optional[str] = KEY_HEADER):
        found = api.one(service_request_id, lang_of(request, locale), api_key=api_key or x_api_key,
                        path=request.url.path)
        return XMLResponse(to_xml("service_requests", "request", [r.model_dump() for r in found.requests]),
                           headers=found.headers)

    @router.get("/media/{service_request_id}/{token}", response_class=FileResponse,
                responses={200: {"content": {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                                 "description": "the photo"}, **_errors_doc(400, 403, 404)},
                summary="A report's photo (the media_url of a request; an api_key of scope full)")
    def media(service_request_id: str = CODE_PATH,
              token: str = PathParam(pattern=TOKEN_RE, description="the photo's random name, from media_url"),
              api_key: Optional[str] = KEY_QUERY, x_api_key: Optional[str] = KEY_HEADER):
        return api.photo(service_request_id, token, api_key or x_api_key)

    return router


def install(app, http_app: FastAPI) -> None:
    """Open311 GeoReport v2 under /open311/v2/ (bot/features.py lists it)."""
    http_app.include_router(build_router(app))
