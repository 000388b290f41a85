"""Nothing identifying a resident leaves through the public Open311 API (KVKK data minimisation).

A resident files a report through the real PTB Application against the fake Bot API server: a
description holding their name and phone number, a pin to 7 decimals and a photo whose EXIF holds
GPS coordinates, the camera owner's name and the camera model. Then every GET route of the app
under /open311 (enumerated from the FastAPI app, not a hand list), /health and /openapi.json are
read without a key and with a key of scope "public": none of those values appears. With a key of
scope "full" they do, and the read is in the audit log (without any of them)."""
from __future__ import annotations

import io
import json
import re
from xml.etree import ElementTree as ET

import httpx
from fastapi import routing
from PIL import Image
from sqlmodel import select

from bot.app import add_configured_channels
from bot.http import create_http_app
from storage import apikeys
from storage import reports as rp
from storage.db import transaction
from storage.models import AuditLog
from tests.support.telegram import TelegramChat
from tests.test_reports_telegram import CODE, buttons, texts

RESIDENT = 7201
DESCRIPTION = "Ben Ayşe Yılmaz, tel 0555 111 22 33. Evimin önündeki kaldırım çöktü."
PIN = (38.3851234, 27.1754321)
OWNER, MODEL = "Ayse Yilmaz Kamera", "Pixel 7 Pro KTLM"
EXIF_GPS = ((38.0, 23.0, 6.4442), (27.0, 10.0, 31.5556))
# What identifies the resident: their words, the exact pin beyond 3 decimals, the photo's metadata.
IDENTIFYING = ["Ayşe", "Yılmaz", "Ayse", "Yilmaz", "0555", "111 22 33", "5551112233", OWNER, MODEL, "Evimin",
               "38.3851", "27.1754", "6.4442", "31.5556", f"user{RESIDENT}", str(RESIDENT)]


def photo_with_exif() -> bytes:
    """A real JPEG whose EXIF carries the camera owner's name, the model and a GPS position."""
    exif = Image.Exif()
    exif[0x0110] = MODEL                       # Model
    exif[0x013B] = OWNER                       # Artist
    exif.get_ifd(0x8769)[0xA430] = OWNER        # CameraOwnerName
    exif.get_ifd(0x8825).update({1: "N", 2: EXIF_GPS[0], 3: "E", 4: EXIF_GPS[1]})
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 90, 60)).save(out, "JPEG", exif=exif.tobytes())
    return out.getvalue()


def readable(response: httpx.Response) -> str:
    """The body as sent and as a client reads it (JSON unescaped, XML text), to search in."""
    parts = [response.content.decode("utf-8", errors="replace"), json.dumps(dict(response.headers))]
    kind = response.headers.get("content-type", "")
    if kind.startswith("application/json"):
        parts.append(json.dumps(response.json(), ensure_ascii=False))
    elif kind.startswith("application/xml"):
        parts.append(" ".join(ET.fromstring(response.content).itertext()))
    return "\n".join(parts)


def get_routes(http_app, prefix: str) -> list[str]:
    """Every GET route of the app under prefix, included routers too (as FastAPI's OpenAPI walks
    them, hidden routes as well; FastAPI before 0.16x kept them flat in app.routes)."""
    walk = getattr(routing, "iter_route_contexts", lambda routes: routes)
    return sorted({r.path for r in walk(http_app.routes)
                   if "GET" in (r.methods or ()) and (r.path or "").startswith(prefix)})


async def test_public_open311_shows_nothing_identifying_a_resident(make_app, tg, db_url):
    app = make_app(database_url=db_url, telegram_bot_token=tg.token, telegram_api_url=tg.root,
                   public_base_url="https://katilim.example.org")
    add_configured_channels(app)
    channel = app.channels["telegram"]
    await channel.start()
    try:
        code = await _file_report(tg, channel)
    finally:
        await channel.stop()
    original = photo_with_exif()
    exif = Image.open(io.BytesIO(original)).getexif()
    assert exif[0x013B] == OWNER and exif.get_ifd(0x8825)[1] == "N" and MODEL.encode() in original
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        [photo] = rp.media_of(db, report.id, kind="photo")
        assert report.description == DESCRIPTION and (report.latitude, report.longitude) == PIN
        rp.set_status(db, code, "in_progress", "staff:1", note="Ekip yönlendirildi")
        public_key = apikeys.create_key(db, "open-data")[1]
        full_key = apikeys.create_key(db, "crm-full", scope="full")[1]
    stored = open(photo.path, "rb").read()
    # the photo's bytes (as sent and as stored), its token and its file name (a SHA-256) never show
    secrets = [photo.token, photo.path.rsplit("/", 1)[-1], photo.path.rsplit("/", 1)[-1][:16]]
    photo_bytes = [original[len(original) // 2:][:40], stored[len(stored) // 2:][:40]]

    http_app = create_http_app(app)
    fill = {"service_request_id": code, "service_code": "road", "token": photo.token}
    paths = [re.sub(r"\{(\w+)\}", lambda m: fill[m.group(1)], p) for p in get_routes(http_app, "/open311")]
    assert len(paths) == 8 and f"/open311/v2/media/{code}/{photo.token}" in paths
    paths += [f"/open311/v2/requests.json?service_request_id={code}", "/open311/v2/requests.xml?status=open",
              "/health", "/openapi.json"]
    seen = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=http_app), base_url="http://test") as c:
        for path in paths:
            for headers in ({}, {"X-Api-Key": public_key}):
                response = await c.get(path, headers=headers)
                seen[(path, bool(headers))] = response.status_code
                body = readable(response)
                for value in IDENTIFYING + secrets:
                    assert value not in body, (path, headers, value)
                for chunk in photo_bytes:
                    assert chunk not in response.content, path
        public = (await c.get(f"/open311/v2/requests/{code}.json")).json()[0]
        # ... and with the full key, every detail (each read audited)
        full = (await c.get(f"/open311/v2/requests/{code}.json", params={"api_key": full_key})).json()[0]
        served = await c.get(full["media_url"].removeprefix("https://katilim.example.org"),
                             headers={"X-Api-Key": full_key})
    media_path = f"/open311/v2/media/{code}/{photo.token}"
    assert seen[(media_path, False)] == seen[(media_path, True)] == 403
    assert all(status == 200 for (path, _), status in seen.items() if path != media_path), seen
    # what the public does see: category, status, the staff's public note, dates, a coarse location
    assert public["service_code"] == "road" and public["status"] == "open"
    assert public["status_notes"] == "Ekip yönlendirildi" and public["requested_datetime"]
    assert (public["lat"], public["long"]) == (38.385, 27.175)
    assert public["description"] is None and public["media_url"] is None

    assert full["description"] == DESCRIPTION and (full["lat"], full["long"]) == PIN
    assert served.status_code == 200 and served.content == stored
    assert served.headers["content-type"] == "image/jpeg" and served.headers["cache-control"] == "private, no-store"
    with transaction(app.db) as db:
        rows = db.exec(select(AuditLog).where(AuditLog.action.startswith("open311."))
                       .order_by(AuditLog.id)).all()
    assert [(a.actor, a.action, a.target) for a in rows] == [
        ("open311:crm-full", "open311.full_read", f"/open311/v2/requests/{code}.json"),
        ("open311:crm-full", "open311.media_read", code)]
    assert rows[0].details["codes"] == [code] and rows[0].details["count"] == 1
    logged = repr([(a.actor, a.target, a.details) for a in rows])
    for value in IDENTIFYING:
        assert value not in logged


async def _file_report(tg, channel) -> str:
    """/bildir through Telegram: category, exact pin (its mahalle confirmed), description, the photo
    with EXIF, confirm."""
    ayse = TelegramChat(tg, channel, RESIDENT, "tr")
    await ayse.onboard()
    await ayse.say("/bildir")
    await ayse.tap("c:road")
    await ayse.pin(*PIN)
    await ayse.tap("yes")
    await ayse.say(DESCRIPTION)
    calls = await ayse.photo(photo_with_exif())
    assert "1/3" in texts(calls)
    calls = await ayse.tap("done")
    assert "confirm" in buttons(calls)
    calls = await ayse.tap("confirm")
    return CODE.search(texts(calls)).group(0)
