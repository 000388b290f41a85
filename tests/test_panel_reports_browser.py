"""The console's report list, map and dashboard in a real browser (Chromium through Playwright)
against a real `katilim run` whose tile server cannot be reached: filtering by keyboard, a bulk
status change, a live update, the map's clustered pins and a click that opens a report, a
phone-size screen. Screenshots: tests/artifacts/panel-reports*.png, panel-map*.png,
panel-dashboard-*.png."""
from __future__ import annotations

import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from bot.catalog import load_catalog
from conversations.domain import reports as domain
from conversations.permissions import Actor
from storage import reports as rp
from storage.db import make_engine, transaction, utcnow
from tests.browser import browser, page, screenshot  # noqa: F401  (fixtures)
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer
from tests.test_panel_browser import free_port, katilim, katilim_run

ROOT = Path(__file__).resolve().parent.parent
CATALOG = load_catalog(ROOT / "bot" / "catalogs" / "buca.toml")
SEED = [  # category, description, mahalle, pin offset (None: no pin), days ago, status
    ("road", "Kaldırımda büyük bir çukur var, yayalar yola iniyor.", "kozagac", (0.001, 0.002), 0.2, "new"),
    ("lighting", "Sokak lambası üç gündür yanmıyor.", "kozagac", (-0.002, 0.001), 1, "seen"),
    ("waste", "Konteyner taşmış, çöpler yolda.", "adatepe", None, 2, "in_progress"),
    ("animals", "Parkta yaralı bir köpek var.", "adatepe", (0.003, -0.002), 0.5, "new"),
    ("parks", "Salıncak kırık, çocuklar için tehlikeli.", "ataturk", (0.0, 0.0), 6, "resolved"),
    ("road", "Asfalt çökmüş.", "ataturk", (0.001, 0.001), 30, "new"),
    ("water", "Rögar kapağı yerinden oynamış.", "baris", (0.002, 0.0), 3, "rejected"),
    ("noise", "Gece geç saatte yüksek müzik.", "akincilar", None, 0.1, "new"),
]


def seed(url: str) -> list[str]:
    engine = make_engine(url)
    made = []
    try:
        with transaction(engine) as db:
            for i, (category, text, mahalle, offset, days, status) in enumerate(SEED * 3):
                centre = CATALOG.neighbourhood(mahalle).centre
                pin = None if offset is None else (centre[0] + offset[0] + i * 0.0004, centre[1] + offset[1])
                report = domain.file(db, Actor.system(), prefix="BCA", category=category, description=text,
                                          mahalle=mahalle, latitude=pin[0] if pin else None,
                                          longitude=pin[1] if pin else None, catalog=CATALOG,
                                          now=utcnow() - timedelta(days=days, minutes=i))
                if status != "new":
                    rp.set_status(db, report.code, status, "staff:1", note="ok" if status == "rejected" else "")
                made.append(report.code)
    finally:
        engine.dispose()
    return made


@pytest.fixture
def running(tmp_path):
    """`katilim run` (Telegram through the fake Bot API) with the HTTP server, and a map tile
    server that answers nothing (a closed port)."""
    with FakeTelegramServer() as tg:
        yield from _run(tmp_path, tg)


def _run(tmp_path, tg):
    port, dead = free_port(), free_port()
    url = f"sqlite:///{tmp_path / 'katilim.db'}"
    env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root, DATABASE_URL=url,
                         MEDIA_DIR=str(tmp_path / "media"), HTTP_PORT=str(port),
                         PUBLIC_BASE_URL=f"http://127.0.0.1:{port}",
                         PANEL_TILE_URL=f"http://127.0.0.1:{dead}/{{z}}/{{x}}/{{y}}.png")

    def cli(*args: str) -> str:
        done = subprocess.run([*katilim(), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    cli("db", "upgrade")
    cli("staff", "add", "--console", "ayse", "--name", "Ayşe Yılmaz", "--role", "staff", "--department", "fen_isleri",
        "--department", "veteriner_isleri")
    codes = seed(url)
    with katilim_run(tmp_path, env, tg):
        yield f"http://127.0.0.1:{port}", cli, codes, url


def sign_in(tab, base, cli) -> None:
    tab.goto(cli("staff", "login-link", "1").strip())
    tab.get_by_role("button", name="Giriş yap").click()
    tab.wait_for_url(base + "/panel/")


def test_list_filters_bulk_live_and_map(running, page):
    base, cli, codes, url = running
    sign_in(page, base, cli)
    assert page.get_by_role("heading", name="Pano", level=1).is_visible()
    screenshot(page, "panel-dashboard-staff")

    # the list: a staff member's departments by default (fen_isleri: road, lighting, water;
    # veteriner_isleri: animals)
    page.get_by_role("link", name="Bildirimler", exact=True).click()
    page.wait_for_url(re.compile(r".*/panel/reports$"))
    rows = page.locator("tbody#rows tr")
    assert rows.count() == 15
    assert page.get_by_label("Birim", exact=True).input_value() == "mine"
    assert page.locator("tr.overdue").count() >= 3          # the 30-day-old potholes
    screenshot(page, "panel-reports")

    # keyboard only: type in the search box, Enter submits; Turkish-aware ("kopek" finds "köpek")
    page.get_by_label("Ara", exact=True).focus()
    page.keyboard.type("kopek")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r".*q=kopek.*"))
    assert rows.count() == 3
    assert all("köpek" in rows.nth(i).inner_text() for i in range(3))

    # bulk status: tick two, mark them seen
    page.get_by_label("Birim", exact=True).select_option("")
    page.get_by_label("Ara", exact=True).fill("")
    page.get_by_role("button", name="Süz").click()
    page.wait_for_load_state()
    assert rows.count() == 24
    first, second = rows.nth(0).get_attribute("data-code"), rows.nth(1).get_attribute("data-code")
    page.get_by_label("Birim", exact=True).select_option("mine")
    page.get_by_role("button", name="Süz").click()
    page.wait_for_load_state()
    targets = [rows.nth(i).get_attribute("data-code") for i in range(2)]
    for code in targets:
        page.get_by_label(f"{code} bildirimini seç").check()
    page.get_by_label("Yeni durum").select_option("seen")
    page.get_by_role("button", name="Seçilenlerin durumunu değiştir").click()
    page.wait_for_url(re.compile(r".*notice=bulk_done$"))
    assert page.get_by_role("status").first.inner_text() == "Seçilen bildirimler güncellendi."
    for code in targets:
        assert "Görüldü" in page.locator(f'tr[data-code="{code}"]').inner_text()
    assert first and second

    # live: a report filed now appears on top without a reload
    page.goto(base + "/panel/reports")
    engine = make_engine(url)
    try:
        with transaction(engine) as db:
            fresh = domain.file(db, Actor.system(), prefix="BCA", category="road",
                                     description="Yeni gelen çukur bildirimi", mahalle="kozagac", catalog=CATALOG)
            fresh_code = fresh.code
    finally:
        engine.dispose()
    page.evaluate("window.katilimLivePoll()")
    page.wait_for_selector(f'tr[data-code="{fresh_code}"]', timeout=10_000)
    assert rows.nth(0).get_attribute("data-code") == fresh_code
    assert page.locator("#live").inner_text() == "Sayfa açıldığından beri yeni ya da değişen bildirim: 1"
    screenshot(page, "panel-reports-live")

    # the map: no tile server reachable, the pins and clusters are there all the same
    page.get_by_role("link", name="Haritada göster").click()
    page.wait_for_url(re.compile(r".*/panel/map\?.*"))
    page.wait_for_selector("#map[data-shown]", state="attached", timeout=10_000)
    assert page.locator("#map-summary").inner_text() == "Haritada 16 bildirim (süzgece uyan: 16)."
    page.wait_for_selector(".cluster, path.leaflet-interactive")
    assert page.locator(".leaflet-control-attribution").inner_text().endswith("© OpenStreetMap contributors")
    assert page.get_by_role("list", name="Renklerin anlamı").inner_text().count("\n") >= 7
    screenshot(page, "panel-map")
    # zoom in until single pins show, and click one: it opens that report's page
    for _ in range(6):
        if page.locator("path.leaflet-interactive").count():
            break
        page.locator(".cluster").first.click()
        page.wait_for_timeout(400)
    pin = page.locator("path.leaflet-interactive").first
    pin.click(force=True)
    page.wait_for_url(re.compile(r".*/panel/reports/BCA-\d{4}-\d{6}$"))

    # the same filter on the map as on the list: only adatepe
    page.goto(base + "/panel/map?f=1&mahalle=adatepe")
    page.wait_for_selector("#map[data-shown]", state="attached", timeout=10_000)
    assert page.locator("#map-summary").inner_text() == "Haritada 6 bildirim (süzgece uyan: 6)."

    # a phone-size screen: nothing wider than the screen
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(base + "/panel/reports")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "panel-reports-phone")
    page.goto(base + "/panel/map")
    page.wait_for_selector("#map[data-shown]", state="attached", timeout=10_000)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "panel-map-phone")
