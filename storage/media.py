"""The content-addressed media store under MEDIA_DIR: photos, voice notes and files from every
channel are kept as <sha256 of the stored bytes><extension>, written atomically, size-capped.

Every upload goes through `keep` (bot/app.py App._fetch_media, for every channel), which judges a
file by its own first bytes, never by the MIME type or the file name the sender gave:

- a photo must be JPEG, PNG or WebP. It is decoded with Pillow under MEDIA_MAX_PIXELS, turned
  upright by its EXIF orientation, and re-encoded in its own format from the pixels alone (JPEG at
  MEDIA_JPEG_QUALITY; PNG lossless; WebP at the same quality), so EXIF (GPS, camera, owner), XMP,
  ICC profiles, comments and anything appended after the image are gone. The hash names the
  cleaned bytes. SVG, HTML, GIF, HEIC, a truncated or undecodable file: refused ("not_a_photo");
  more pixels than the limit: refused ("too_many_pixels"), before the pixels are decoded.
- a voice note must be one of the audio containers the channels send (Telegram: OGG/Opus;
  WhatsApp through Twilio: OGG, AMR, MP3, AAC, MP4/M4A); it is kept as it is (there is no audio
  decoder here to re-encode it with), named by the format its bytes show ("not_audio" otherwise).
- any other file is kept as it is (".pdf" when it starts like one, else ".bin"); only a state that
  accepts documents ever has one downloaded.

A refusal is a `MediaRefused` with a short reason (below); the conversation step turns it into a
sentence in the resident's language. This module knows nothing of channels or of the web.
"""
from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

# Why an upload is not kept (Media.refused); conversations/step.py MEDIA_REFUSALS says it.
NOT_A_PHOTO = "not_a_photo"          # not JPEG/PNG/WebP by its bytes, or does not decode whole
TOO_MANY_PIXELS = "too_many_pixels"  # over MEDIA_MAX_PIXELS (a decompression bomb, or just huge)
NOT_AUDIO = "not_audio"              # a "voice note" whose bytes are no audio format a channel sends
TOO_LARGE = "too_large"              # over MEDIA_MAX_BYTES
UNREADABLE = "unreadable"            # a local file (the terminal's /foto) missing or unreadable
UNAVAILABLE = "unavailable"          # the channel could not hand it over (network, gone, no fetcher)
NOT_WANTED = "not_wanted"            # the resident's state takes no attachment of its kind: not fetched

DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_QUALITY = 85

# Magic bytes → (Pillow format, extension, content type) for the photos we keep.
_PHOTO_MAGIC = (
    (b"\xff\xd8\xff", "JPEG", ".jpg", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "PNG", ".png", "image/png"),
)
# Pillow's "this image may be a decompression bomb" warning is a refusal, not a line in the log.
warnings.filterwarnings("error", category=Image.DecompressionBombWarning)

# The formats Pillow may report for each (a phone's JPEG with a depth map or preview opens as MPO).
_PILLOW_FORMATS = {"JPEG": ("JPEG", "MPO"), "PNG": ("PNG",), "WEBP": ("WEBP",)}


class MediaRefused(ValueError):
    """An upload that is not kept; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MediaTooLarge(MediaRefused):
    """A file over MEDIA_MAX_BYTES: not downloaded (or not sent)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(TOO_LARGE, f"file of {size} bytes is over the {limit} byte limit (MEDIA_MAX_BYTES)")
        self.size = size
        self.limit = limit


@dataclass(frozen=True)
class Cleaned:
    """What is stored: the bytes, their extension and content type (judged from the bytes)."""

    data: bytes
    suffix: str
    content_type: str


@dataclass(frozen=True)
class Stored:
    path: Path
    content_type: str
    size: int


@dataclass(frozen=True)
class Limits:
    """MEDIA_MAX_BYTES, MEDIA_MAX_PIXELS and MEDIA_JPEG_QUALITY (bot/settings.py)."""

    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    quality: int = DEFAULT_QUALITY

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.media_max_bytes, settings.media_max_pixels, settings.media_jpeg_quality)


def check_size(size: int | None, limit: int) -> None:
    if size is not None and size > limit:
        raise MediaTooLarge(size, limit)


# ---------------------------------------------------------------- judging and cleaning
def photo_format(data: bytes) -> tuple[str, str, str] | None:
    """(Pillow format, extension, content type) of a JPEG, PNG or WebP by its first bytes; else None."""
    for magic, fmt, suffix, content_type in _PHOTO_MAGIC:
        if data.startswith(magic):
            return fmt, suffix, content_type
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP", ".webp", "image/webp"
    return None


def audio_format(data: bytes) -> tuple[str, str] | None:
    """(extension, content type) of the audio containers the channels send, by their first bytes."""
    head = data[:16]
    if head.startswith(b"OggS"):
        return ".ogg", "audio/ogg"                      # Telegram voice notes (Opus), WhatsApp audio
    if head.startswith(b"#!AMR-WB\n"):
        return ".awb", "audio/amr-wb"
    if head.startswith(b"#!AMR\n"):
        return ".amr", "audio/amr"
    if head.startswith(b"ID3"):
        return ".mp3", "audio/mpeg"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # an MPEG audio frame sync
        if head[1] & 0x06 == 0:                          # layer 0: an ADTS (AAC) header
            return ".aac", "audio/aac"
        return ".mp3", "audio/mpeg"
    if head[4:8] == b"ftyp":
        return ".m4a", "audio/mp4"                      # MP4/M4A (WhatsApp's audio/mp4, iPhone voice memos)
    return None


def clean_photo(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, quality: int = DEFAULT_QUALITY) -> Cleaned:
    """The photo re-encoded from its pixels alone, upright, in its own format; MediaRefused when it
    is not a JPEG, PNG or WebP that decodes whole within max_pixels."""
    found = photo_format(data)
    if found is None:
        raise MediaRefused(NOT_A_PHOTO, "not JPEG, PNG or WebP by its first bytes")
    fmt, suffix, content_type = found
    # Pillow warns past its limit (an error here: see below) and refuses past twice it; the size is
    # also checked here from the header, before any pixel is decoded, whatever the warning filters.
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise MediaRefused(TOO_MANY_PIXELS, f"{width}×{height} is over {max_pixels} pixels")
            if image.format not in _PILLOW_FORMATS[fmt]:
                raise MediaRefused(NOT_A_PHOTO, f"opened as {image.format}, its bytes say {fmt}")
            image.load()  # the first frame; a truncated or corrupt file fails here
            pixels = ImageOps.exif_transpose(image)  # upright before the orientation tag goes
            return Cleaned(_encode(pixels, fmt, quality), suffix, content_type)
    except MediaRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaRefused(TOO_MANY_PIXELS, str(exc)) from None
    except Image.UnidentifiedImageError:
        raise MediaRefused(NOT_A_PHOTO, f"starts like {fmt} but is not one") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as exc:  # a bad file
        raise MediaRefused(NOT_A_PHOTO, f"{type(exc).__name__}: {exc}"[:200]) from None


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    """Only the pixels go out: a fresh image's info holds no EXIF, XMP, ICC profile or comment, and
    save() is given nothing but the encoder's own options."""
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    if fmt == "JPEG":
        wanted = image.mode if image.mode in ("L", "RGB") else "RGB"
    elif fmt == "PNG":
        wanted = image.mode if image.mode in ("1", "L", "LA", "I", "I;16", "RGB", "RGBA") else (
            "RGBA" if "A" in image.getbands() else "RGB")
    else:
        wanted = "RGBA" if "A" in image.getbands() else "RGB"
    image = image.convert(wanted) if image.mode != wanted else image.copy()
    image.info.clear()
    out = io.BytesIO()
    if fmt == "JPEG":
        image.save(out, "JPEG", quality=quality, optimize=True)
    elif fmt == "PNG":
        image.save(out, "PNG", optimize=False)
    else:
        image.save(out, "WEBP", quality=quality, method=4)
    return out.getvalue()


def clean(kind: str, data: bytes, limits: Limits = Limits()) -> Cleaned:
    """What `keep` would store for an upload of this kind ("photo", "voice" or anything else)."""
    check_size(len(data), limits.max_bytes)
    if kind == "photo":
        return clean_photo(data, max_pixels=limits.max_pixels, quality=limits.quality)
    if kind == "voice":
        found = audio_format(data)
        if found is None:
            raise MediaRefused(NOT_AUDIO, "not an audio format the channels send, by its first bytes")
        return Cleaned(data, *found)
    if data.startswith(b"%PDF-"):
        return Cleaned(data, ".pdf", "application/pdf")
    return Cleaned(data, ".bin", "application/octet-stream")


def keep(kind: str, data: bytes, folder: Path | str, limits: Limits = Limits()) -> Stored:
    """Judge, clean and store an upload (the one way a resident's file enters MEDIA_DIR)."""
    cleaned = clean(kind, data, limits)
    path = store(folder, cleaned.data, cleaned.suffix)
    return Stored(path, cleaned.content_type, len(cleaned.data))


def read_local(path: Path | str, limit: int) -> bytes:
    """A file on this machine (the terminal's /foto and /ses), size-capped; UNREADABLE when it is
    missing, a directory or not readable."""
    path = Path(path)
    try:
        if not path.is_file():
            raise MediaRefused(UNREADABLE, f"no file at {path}")
        check_size(path.stat().st_size, limit)
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise MediaRefused(UNREADABLE, f"{type(exc).__name__}: {exc}") from None
    check_size(len(data), limit)
    return data


# ---------------------------------------------------------------- the store
def path_for(folder: Path | str, data: bytes, suffix: str) -> Path:
    return Path(folder) / f"{hashlib.sha256(data).hexdigest()}{suffix}"


def store(folder: Path | str, data: bytes, suffix: str) -> Path:
    """Keep the bytes under their hash (once: the same photo sent twice is one file)."""
    target = path_for(folder, data, suffix)
    if not target.exists():
        write_atomically(target, data)
    else:
        os.utime(target)  # stored again: fresh for housekeeping's sweep of old unreferenced files
    return target


def write_atomically(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
