"""GET /health tells the truth: it commits a write to the database and writes a file into
MEDIA_DIR, answering 503 with the part that failed. Proved on a real full disk (a tiny tmpfs,
where the machine lets us mount one) next to a WhatsApp webhook that fails on it, and on a
database that refuses writes (SQLite opened read-only, PostgreSQL with read-only transactions)
with a MEDIA_DIR that is no longer a directory."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from bot.http import serve_http
from conversations.i18n import t_in
from handlers.whatsapp import WEBHOOK_PATH
from tests.test_whatsapp import AYSE, twilio, wa  # noqa: F401  (the fixtures of the WhatsApp tests)

DISK_BYTES = 6 * 1024 * 1024


async def health(port: int) -> httpx.Response:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=15) as client:
        return await client.get("/health")


async def test_health_answers_ok_when_every_part_accepts_writes(make_app, db_url):
    app = make_app(database_url=db_url)
    server = await serve_http(app)
    try:
        for _ in range(3):  # every call writes: the second and third update the probe row
            response = await health(server.port)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ok"
            assert response.json()["database"] == "ok" and response.json()["media"] == "ok"
        assert not [p for p in Path(app.settings.media_dir).iterdir()]  # the media probe leaves nothing
    finally:
        server.should_exit = True
        await server.wait_closed()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 6 MB tmpfs (mount needs root and a machine that allows it: skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a tiny filesystem needs mount as root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk refuses (ENOSPC)."""
    filler = disk / "filler"
    # unbuffered: a write the disk refuses leaves nothing in a buffer for close() to fail on (a
    # partly written last chunk, depending on where the disk happens to fill, used to raise there)
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            pass
    return filler


async def test_a_full_disk_makes_health_fail_with_the_webhooks(tiny_disk, wa, figure):
    h = await wa(database_url=f"sqlite:///{tiny_disk / 'katilim.db'}", media_dir=tiny_disk / "media")
    await h.onboard(AYSE)
    assert (await health(h.server.port)).status_code == 200

    filler = fill(tiny_disk)
    params = h.twilio.inbound(AYSE, "/menu")
    refused = await h.post(WEBHOOK_PATH, params)
    assert refused.status_code == 500  # the message cannot be stored: Twilio will retry it
    response = await health(h.server.port)
    assert response.status_code == 503, response.text
    assert response.json()["status"] == "fail"
    assert response.json()["database"] == "fail: disk full"
    assert response.json()["media"] == "fail: disk full"

    filler.unlink()  # room again: health and the webhook's retry succeed
    response = await health(h.server.port)
    assert response.status_code == 200, response.text
    before = len(h.twilio.calls)
    assert (await h.post(WEBHOOK_PATH, params)).status_code == 200
    await h.channel.idle()
    assert any(t_in("tr", "menu.title") in m.body for m in h.twilio.calls[before:] if m.to == AYSE)
    figure(f"full disk: webhook 500 and /health 503 (database: disk full, media: disk full) on a "
           f"{DISK_BYTES // 2**20} MB tmpfs; both 200 again once room was made")


def read_only(url: str) -> str:
    """The same database, opened so that it refuses every write."""
    if url.startswith("sqlite:///"):
        return f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return url + "%20-cdefault_transaction_read_only%3Don"


async def test_a_database_that_refuses_writes_and_a_media_dir_gone_make_health_fail(make_app, db_url, tmp_path):
    make_app(database_url=db_url)  # the schema, migrated with a writable connection
    media = tmp_path / "media-ro"
    app = make_app(database_url=read_only(db_url), media_dir=media)
    server = await serve_http(app)
    try:
        response = await health(server.port)
        assert response.status_code == 503, response.text
        assert response.json() | {"worker": "", "channels": []} == {
            "status": "fail", "database": "fail: read-only", "media": "ok", "worker": "", "channels": []}
        # the media directory replaced by a file (a disk remounted, a volume gone)
        shutil.rmtree(media)
        media.write_text("not a directory")
        response = await health(server.port)
        assert response.status_code == 503
        assert response.json()["database"] == "fail: read-only"
        assert response.json()["media"] == "fail: not writable"
    finally:
        server.should_exit = True
        await server.wait_closed()
