"""Every stored image is clean, and attachments are fetched only where a state takes them.

The cleaning itself (storage/media.py): formats judged by their bytes, metadata gone, orientation
kept, pixel limits, voice notes by their bytes. Then through the real interfaces, a resident filing
a report uploads an SVG with a script, HTML served as image/jpeg, a 30000×30000 PNG bomb, a
truncated JPEG and a phone JPEG with EXIF GPS and the owner's name: over Telegram (the real PTB
Application against the fake Bot API server), over WhatsApp (signed Twilio webhooks, media served
by the fake Twilio API) and in the terminal (`katilim chat` as a subprocess, `/foto`). Each refusal
is answered in the resident's language, keeps the draft and stores nothing; the good photo is
stored re-encoded without a byte of its metadata, and the report's media row points at it. A photo
sent where no state takes one (a yes/no question, the menu, a first message) is never downloaded.
"""
from __future__ import annotations

import io
import re
import sqlite3
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import ExifTags, Image, ImageCms
from sqlmodel import select, update

from bot.app import add_configured_channels
from conversations.i18n import t_in
from storage import media
from storage import reports as rp
from storage.db import transaction, utcnow
from storage.models import ChannelIdentity, ConversationSession
from tests import media_support as ms
from tests.fakes.telegram_api import FakeTelegramServer
from tests.support.telegram import TelegramChat
from tests.test_console import katilim
from tests.test_whatsapp import AYSE, numbered, twilio, wa  # noqa: F401  (fixtures)

CODE = re.compile(r"[A-Z]{2,6}-\d{4}-\d{6}")
PIN = (38.38500, 27.17500)
REFUSED = list(ms.refused_uploads())


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


# ---------------------------------------------------------------- the cleaning, format by format
def _image_with_metadata(fmt: str) -> bytes:
    image = Image.new("RGBA" if fmt == "PNG" else "RGB", (40, 30), (10, 200, 90))
    exif = Image.Exif()
    exif[ExifTags.Base.Artist] = ms.OWNER_ASCII
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: ms.GPS_LAT}
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngInfo

        text = PngInfo()
        text.add_itxt("Author", ms.OWNER)
        image.save(out, "PNG", exif=exif.tobytes(), icc_profile=icc, pnginfo=text)
    else:
        image.save(out, "WEBP", exif=exif.tobytes(), icc_profile=icc, xmp=f"<x>{ms.OWNER}</x>".encode())
    data = out.getvalue()
    assert ms.OWNER_ASCII.encode() in data
    return data


@pytest.mark.parametrize("fmt, suffix, content_type", [("PNG", ".png", "image/png"), ("WEBP", ".webp", "image/webp")])
def test_png_and_webp_stay_in_their_format_without_metadata(fmt, suffix, content_type):
    cleaned = media.clean("photo", _image_with_metadata(fmt))
    assert (cleaned.suffix, cleaned.content_type) == (suffix, content_type)
    for secret in (ms.OWNER.encode(), ms.OWNER_ASCII.encode(), b"Exif\x00\x00", b"iCCP", b"ICCP", b"iTXt"):
        assert secret not in cleaned.data
    with Image.open(io.BytesIO(cleaned.data)) as image:
        image.load()
        assert image.format == fmt and image.size == (40, 30)
        assert not image.getexif() and not {"exif", "icc_profile", "xmp", "Author"} & set(image.info)
        assert image.convert("RGB").getpixel((5, 5)) == pytest.approx((10, 200, 90), abs=3)


def test_jpeg_is_upright_and_stripped_and_named_by_the_cleaned_bytes(tmp_path, figure):
    original = ms.exif_jpeg()
    stored = media.keep("photo", original, tmp_path)
    assert stored.path.name == media.path_for(tmp_path, stored.path.read_bytes(), ".jpg").name
    assert stored.content_type == "image/jpeg" and stored.size == stored.path.stat().st_size
    image = ms.assert_clean_photo(stored.path)
    # orientation 6: stored 120×80 with a red patch top-left, shown turned 90° clockwise
    assert image.size == (80, 120)
    assert image.getpixel((75, 5)) == pytest.approx((250, 10, 10), abs=12)
    assert image.getpixel((5, 5)) == pytest.approx((30, 90, 160), abs=12)
    # the same photo sent twice (or by two residents) is one file
    assert media.keep("photo", original, tmp_path).path == stored.path and len(files_in(tmp_path)) == 1
    figure(f"EXIF photo: {ms.metadata_bytes(original)} bytes of metadata (EXIF with GPS, owner, serial; XMP; "
           f"ICC; comment) stripped; {len(original)} → {stored.size} bytes stored")


def test_anything_appended_after_the_image_is_gone():
    polyglot = ms.plain_jpeg() + ms.HTML
    cleaned = media.clean("photo", polyglot)
    assert b"<script" not in cleaned.data and b"html" not in cleaned.data.lower()


@pytest.mark.parametrize("name", REFUSED)
def test_what_is_not_a_photo_is_refused_with_its_reason(name, tmp_path):
    data, _claimed_type, _filename = ms.refused_uploads()[name]
    with pytest.raises(media.MediaRefused) as refused:
        media.keep("photo", data, tmp_path)
    assert refused.value.reason == ms.REFUSAL_KEYS[name].removeprefix("media.")
    assert files_in(tmp_path) == []


@pytest.mark.parametrize("bomb_warning", ["error", "ignore"])
def test_pixel_limit_is_the_setting_and_pillows(make_settings, bomb_warning):
    """Refused whether Pillow's DecompressionBombWarning is an error (as storage.media makes it in
    the application) or silenced (the size is also checked from the header)."""
    small = ms.bomb_png(3000)                              # the bomb's construction, 9 megapixels: fine
    assert media.clean("photo", small).suffix == ".png"
    for side in (7000, 30000):                             # 49 MP: Pillow's warning; 900 MP: its error
        with warnings.catch_warnings(), pytest.raises(media.MediaRefused) as refused:
            warnings.simplefilter(bomb_warning, Image.DecompressionBombWarning)
            media.clean("photo", ms.bomb_png(side))
        assert refused.value.reason == media.TOO_MANY_PIXELS
    assert Image.MAX_IMAGE_PIXELS == media.DEFAULT_MAX_PIXELS
    tight = media.Limits.from_settings(make_settings(media_max_pixels=4_000_000))
    with pytest.raises(media.MediaRefused):
        media.clean("photo", small, tight)
    assert Image.MAX_IMAGE_PIXELS == 4_000_000
    assert make_settings().media_max_pixels == 40_000_000 and make_settings().media_jpeg_quality == 85
    media.clean("photo", small)                            # back to the default for the rest of the run


@pytest.mark.parametrize("head, suffix, content_type", [
    (b"OggS\x00\x02", ".ogg", "audio/ogg"),                 # Telegram voice notes, WhatsApp audio/ogg
    (b"#!AMR\n<", ".amr", "audio/amr"),
    (b"#!AMR-WB\n", ".awb", "audio/amr-wb"),
    (b"ID3\x04\x00", ".mp3", "audio/mpeg"),
    (b"\xff\xfb\x90\x64", ".mp3", "audio/mpeg"),
    (b"\xff\xf1\x50\x80", ".aac", "audio/aac"),             # ADTS
    (b"\x00\x00\x00\x20ftypM4A ", ".m4a", "audio/mp4"),
])
def test_voice_notes_are_judged_by_their_bytes_and_kept_as_they_are(head, suffix, content_type):
    data = head + bytes(range(200))
    cleaned = media.clean("voice", data)
    assert (cleaned.suffix, cleaned.content_type, cleaned.data) == (suffix, content_type, data)


@pytest.mark.parametrize("data", [ms.SVG, ms.HTML, ms.plain_jpeg(), b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_what_is_not_a_voice_note_is_refused(data):
    with pytest.raises(media.MediaRefused) as refused:
        media.clean("voice", data)
    assert refused.value.reason == media.NOT_AUDIO


def test_size_cap_and_documents(tmp_path):
    with pytest.raises(media.MediaTooLarge):
        media.clean("photo", ms.exif_jpeg(), media.Limits(max_bytes=1024))
    assert media.clean("document", b"%PDF-1.7 ...").suffix == ".pdf"
    assert media.clean("document", ms.HTML).suffix == ".bin"   # never .html
    with pytest.raises(media.MediaRefused) as refused:
        media.read_local(tmp_path / "nowhere.jpg", 1024)
    assert refused.value.reason == media.UNREADABLE
    with pytest.raises(media.MediaRefused):
        media.read_local(tmp_path, 1024)                       # a directory


# ---------------------------------------------------------------- over Telegram
class TgChat(TelegramChat):
    async def to_photos(self) -> None:
        """/bildir (/report), a category, a pin and its mahalle, a description: at the photos question."""
        await self.say("/bildir" if self.lang == "tr" else "/report")
        await self.tap("c:road")
        await self.pin(*PIN)
        await self.tap("yes")
        await self.say("Kaldırımda derin bir çukur var." if self.lang == "tr" else "A deep pothole, cars are damaged.")

    async def file(self, content: bytes, filename: str, mime_type: str) -> list:
        """Sent "as a file": Telegram keeps the bytes (and a phone photo's EXIF) as they are."""
        return await self._sent("document", content, filename, mime_type)


def first_photo(lang: str) -> str:
    """What a resident reads after their first photo: how many are in, how many more may come."""
    from conversations.i18n import translator

    return t_in(lang, "report.photo_saved", n=1, max=3) + "\n" + translator(lang).n("report.photos_more", 2, left=2)


def tg_texts(calls) -> list[str]:
    return [c.text or c.params.get("caption") or "" for c in calls]


@pytest.fixture
async def telegram(make_app, db_url):
    with FakeTelegramServer() as tg:
        # three reports begun within seconds (faster than a thumb): above the flood limit otherwise
        app = make_app(database_url=db_url, telegram_bot_token=tg.token, telegram_api_url=tg.root, flood_messages=60)
        add_configured_channels(app)
        channel = app.channels["telegram"]
        await channel.start()
        try:
            yield app, tg, channel
        finally:
            await channel.stop()


def session_of(app, channel: str, address: str) -> ConversationSession:
    with transaction(app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.channel == channel,
                                                         ChannelIdentity.address == address)).one()
        return db.get(ConversationSession, identity.resident_id)


def check_stored_report(app, code: str, figure, channel: str, refused: int, also: str = "") -> None:
    """The one file in MEDIA_DIR is the cleaned photo, and the report's media row points at it."""
    stored = files_in(app.settings.media_dir)
    assert len(stored) == 1, stored
    image = ms.assert_clean_photo(stored[0])
    assert image.size == (80, 120)                                  # upright
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        rows = rp.media_of(db, report.id, kind="photo")
        assert [(m.path, m.content_type) for m in rows] == [(str(stored[0]), "image/jpeg")]
    original = ms.exif_jpeg()
    figure(f"{channel}: {refused} of {refused + 1} uploads refused (SVG with a script, HTML as image/jpeg, "
           f"{len(ms.bomb_png()) // 1024} KB PNG of 30000×30000, truncated JPEG{also}), nothing of them stored; "
           f"the EXIF photo stored with {ms.metadata_bytes(original)} metadata bytes stripped "
           f"({len(original)} → {stored[0].stat().st_size} bytes)")


async def test_uploads_over_telegram(telegram, figure):
    app, tg, channel = telegram
    ayse = TgChat(tg, channel, 8101, "en")
    await ayse.onboard()
    await ayse.to_photos()
    draft = dict(session_of(app, "telegram", "8101").data)
    assert session_of(app, "telegram", "8101").state == "report.photos"

    for name in REFUSED:
        data, claimed, filename = ms.refused_uploads()[name]
        calls = await ayse.file(data, filename, claimed)
        assert tg_texts(calls) == [t_in("en", ms.REFUSAL_KEYS[name])], name
        session = session_of(app, "telegram", "8101")
        assert session.state == "report.photos" and session.data == draft     # the draft survives
        assert files_in(app.settings.media_dir) == []
    calls = await ayse.photo(ms.HTML)                       # HTML as a Telegram "photo" too
    assert tg_texts(calls) == [t_in("en", "media.not_a_photo")]

    calls = await ayse.file(ms.exif_jpeg(), "PXL_20261201_101500.jpg", "image/jpeg")
    assert tg_texts(calls) == ["📷 Photo 1/3 added.\nYou can add 2 more photos, or tap ✅ Continue."]
    await ayse.tap("done")
    calls = await ayse.tap("confirm")
    code = CODE.search("\n".join(tg_texts(calls))).group(0)
    check_stored_report(app, code, figure, "Telegram", len(REFUSED) + 1, also=", HTML as a Telegram photo")


async def test_telegram_attachments_are_fetched_only_where_a_state_takes_them(telegram):
    app, tg, channel = telegram
    def gets() -> int:
        return len(tg.calls_of("getFile"))

    newcomer = TgChat(tg, channel, 8201, "tr")             # a first message: onboarding comes first
    calls = await newcomer.photo(ms.exif_jpeg())
    assert t_in("tr", "onboarding.choose_language") in tg_texts(calls)[0]

    ali = TgChat(tg, channel, 8202, "tr")
    await ali.say("/start")
    await ali.tap("lang:tr")
    await ali.tap("choose")                                 # consent one purpose at a time: a yes/no question
    calls = await ali.photo(ms.exif_jpeg())
    assert tg_texts(calls)[0] == t_in("tr", "engine.wrong_kind", what=t_in("tr", "kind.photo"))
    assert session_of(app, "telegram", "8202").state == "onboarding.purpose"
    for _ in range(4):
        await ali.tap("yes")
    await ali.tap("skip")                                   # the mahalle: now in the menu
    assert session_of(app, "telegram", "8202").state == "menu"
    calls = await ali.file(ms.exif_jpeg(), "IMG.jpg", "image/jpeg")
    assert tg_texts(calls)[0] == t_in("tr", "engine.wrong_kind", what=t_in("tr", "kind.photo"))
    await ali.to_photos()
    calls = await ali.file(b"%PDF-1.7 a plan", "plan.pdf", "application/pdf")  # photos only here
    assert tg_texts(calls)[0] == t_in("tr", "engine.wrong_kind", what=t_in("tr", "kind.document"))
    calls = await ali.say("/iptal")
    assert gets() == 0 and files_in(app.settings.media_dir) == []  # nothing was even downloaded

    # a conversation left at the photos question past SESSION_EXPIRY: the photo finds the menu
    await ali.to_photos()
    with transaction(app.db) as db:
        db.exec(update(ConversationSession).where(ConversationSession.state == "report.photos")
                .values(updated_at=utcnow() - app.settings.session_expiry - timedelta(minutes=1)))
    calls = await ali.photo(ms.plain_jpeg())
    assert tg_texts(calls)[0] == t_in("tr", "engine.expired")
    assert gets() == 0 and files_in(app.settings.media_dir) == []

    # and where a state takes it, it is fetched (once: the largest size of the photo)
    await ali.to_photos()
    calls = await ali.photo(ms.plain_jpeg())
    assert tg_texts(calls) == [first_photo("tr")]
    assert gets() == 1 and len(files_in(app.settings.media_dir)) == 1


# ---------------------------------------------------------------- over WhatsApp
async def test_uploads_over_whatsapp(wa, figure):
    h = await wa()
    await h.onboard()
    await h.say("/bildir")
    await h.say("1")                                        # the first category
    await h.say("", Latitude=str(PIN[0]), Longitude=str(PIN[1]), MessageType="location")
    await h.say("1")                                        # the pin's mahalle: yes
    await h.say("Kaldırımda büyük bir çukur var, yayalar düşüyor.")
    assert session_of(h.app, "whatsapp", AYSE).state == "report.photos"
    draft = dict(session_of(h.app, "whatsapp", AYSE).data)

    for name in REFUSED:
        data, claimed, _filename = ms.refused_uploads()[name]
        url = h.twilio.add_media(data, claimed)
        sent = await h.say("", NumMedia="1", MediaUrl0=url, MediaContentType0=claimed, MessageType="image")
        assert [m.body for m in sent] == [t_in("tr", ms.REFUSAL_KEYS[name])], name
        session = session_of(h.app, "whatsapp", AYSE)
        assert session.state == "report.photos" and session.data == draft
        assert files_in(h.app.settings.media_dir) == []

    url = h.twilio.add_media(ms.exif_jpeg(), "image/jpeg")
    sent = await h.say("", NumMedia="1", MediaUrl0=url, MediaContentType0="image/jpeg", MessageType="image")
    assert sent[-1].body == first_photo("tr") + "\n\n1 · " + t_in("tr", "report.photos_done")
    sent = await h.say("1")                                 # done: the summary
    assert numbered(sent[-1].body)[0][1] == t_in("tr", "report.confirm")
    sent = await h.say("1")                                 # confirm
    code = CODE.search(sent[0].body).group(0)
    check_stored_report(h.app, code, figure, "WhatsApp", len(REFUSED))


async def test_whatsapp_voice_notes_and_photos_where_no_state_takes_them(wa):
    h = await wa()
    await h.onboard()
    before = len(h.twilio.media_requests)
    url = h.twilio.add_media(ms.exif_jpeg(), "image/jpeg")
    sent = await h.say("", NumMedia="1", MediaUrl0=url, MediaContentType0="image/jpeg", MessageType="image")
    assert sent[0].body == t_in("tr", "engine.wrong_kind", what=t_in("tr", "kind.photo"))   # in the menu
    assert len(h.twilio.media_requests) == before and files_in(h.app.settings.media_dir) == []

    await h.say("/bildir")
    await h.say("1")
    await h.say("Kozağaç")
    await h.say("Okulun önünde")
    fake_voice = h.twilio.add_media(ms.HTML, "audio/ogg")   # a "voice note" that is HTML
    sent = await h.say("", NumMedia="1", MediaUrl0=fake_voice, MediaContentType0="audio/ogg", MessageType="audio")
    assert [m.body for m in sent] == [t_in("tr", "media.not_audio")]
    assert session_of(h.app, "whatsapp", AYSE).state == "report.describe"
    amr = b"#!AMR\n" + bytes(range(256)) * 4                # WhatsApp's audio/amr, kept as it is
    sent = await h.say("", NumMedia="1", MediaUrl0=h.twilio.add_media(amr, "audio/amr"),
                       MediaContentType0="audio/amr", MessageType="audio")
    assert any(t_in("tr", "report.voice_saved") in m.body for m in sent)
    [stored] = files_in(h.app.settings.media_dir)
    assert stored.suffix == ".amr" and stored.read_bytes() == amr
    assert session_of(h.app, "whatsapp", AYSE).data["voice"]["content_type"] == "audio/amr"


# ---------------------------------------------------------------- in the terminal
def test_uploads_in_the_terminal(tmp_path, figure):
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    names = {}
    for name in REFUSED:
        data, _claimed, filename = ms.refused_uploads()[name]
        names[name] = uploads / filename
        names[name].write_bytes(data)
    good = uploads / "PXL_20261201_101500.jpg"
    good.write_bytes(ms.exif_jpeg())
    lines = ["merhaba", "3", "1", "1",                     # العربية, accept every purpose, a mahalle
             "/foto " + str(good),                          # in the menu: not taken, not read
             "/bildir", "1", "/konum 38.385 27.175", "1", "الرصيف مكسور أمام المدرسة منذ أسبوع",
             "/foto " + str(uploads / "yok.jpg"),           # a missing file
             "/ses " + str(good),                           # a photo as a voice note: not at this question
             *("/foto " + str(names[name]) for name in REFUSED),
             "/foto " + str(good), "1", "1"]                # the good one, done, confirm
    done = katilim(tmp_path, "chat", "--as", "ayse", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Traceback" not in done.stderr and t_in("ar", "engine.error") not in out
    wrong_kind = t_in("ar", "engine.wrong_kind", what=t_in("ar", "kind.photo"))
    expected = [wrong_kind, t_in("ar", "report.photos_prompt", max=3, n=0), t_in("ar", "media.unreadable"),
                t_in("ar", "engine.wrong_kind", what=t_in("ar", "kind.voice"))]
    expected += [t_in("ar", ms.REFUSAL_KEYS[name]) for name in REFUSED]
    expected.append(first_photo("ar"))   # the first photo counted is the good one
    at = 0
    for text in expected:
        found = out.find(text, at)
        assert found >= 0, f"{text!r} not found after {at} in:\n{out[at:at + 1500]}"
        at = found + len(text)
    code = CODE.search(out[at:]).group(0)

    media_dir = tmp_path / "media"
    stored = files_in(media_dir)
    assert len(stored) == 1, stored
    image = ms.assert_clean_photo(stored[0])
    assert image.size == (80, 120)
    with sqlite3.connect(tmp_path / "katilim.db") as db:
        rows = db.execute("SELECT m.path, m.content_type FROM report_media m JOIN report r ON r.id = m.report_id "
                          "WHERE r.code = ?", (code,)).fetchall()
    assert rows == [(str(stored[0]), "image/jpeg")]         # MEDIA_DIR's copy, never the user's own path
    assert str(uploads) not in rows[0][0]
    figure(f"terminal: {len(REFUSED) + 1} of {len(REFUSED) + 2} /foto uploads refused (a missing file, SVG, "
           f"HTML as .jpg, PNG bomb, truncated JPEG); the EXIF photo stored clean "
           f"({good.stat().st_size} → {stored[0].stat().st_size} bytes)")


def test_broadcast_photo_from_the_command_line_is_cleaned_too(tmp_path):
    (tmp_path / "duyuru.txt").write_text("Yarın su kesintisi var.\n", encoding="utf-8")
    (tmp_path / "afis.svg").write_bytes(ms.SVG)
    (tmp_path / "afis.jpg").write_bytes(ms.exif_jpeg())
    refused = katilim(tmp_path, "broadcast", "send", "--text-file", str(tmp_path / "duyuru.txt"),
                      "--photo", str(tmp_path / "afis.svg"))
    assert refused.returncode == 2 and "give a JPEG, PNG or WebP file" in refused.stderr
    assert files_in(tmp_path / "media") == []
    sent = katilim(tmp_path, "broadcast", "send", "--text-file", str(tmp_path / "duyuru.txt"),
                   "--photo", str(tmp_path / "afis.jpg"))
    assert sent.returncode == 0, sent.stderr
    [stored] = files_in(tmp_path / "media")
    ms.assert_clean_photo(stored)
    with sqlite3.connect(tmp_path / "katilim.db") as db:
        assert db.execute("SELECT photo_path FROM broadcast").fetchall() == [(str(stored.resolve()),)]
