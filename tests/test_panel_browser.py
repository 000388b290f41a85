"""The staff console in a real browser (Chromium through Playwright, tests/browser.py) against a
real `katilim run` (Telegram through the fake Bot API server): a staff member sends /panel, opens
the link the bot sent, presses the button, is signed in, turns on TOTP, signs out, signs in again
with a code, and an admin adds a colleague; on a phone-size screen too. Screenshots:
tests/artifacts/panel-*.png."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyotp
import pytest

from conversations.i18n import t_in
from tests.browser import browser, page, screenshot  # noqa: F401  (fixtures)
from tests.conftest import test_env as subprocess_env
from tests.fakes.telegram_api import FakeTelegramServer

CHAT = 7001


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def katilim() -> list[str]:
    script = Path(sys.executable).parent / "katilim"
    return [str(script)] if script.exists() else [sys.executable, "-m", "bot.cli"]


@pytest.fixture
def running(tmp_path):
    """`katilim run` with Telegram (the fake Bot API) and the HTTP server on a free port."""
    port = free_port()
    with FakeTelegramServer() as tg:
        env = subprocess_env(TELEGRAM_BOT_TOKEN=tg.token, TELEGRAM_API_URL=tg.root,
                             DATABASE_URL=f"sqlite:///{tmp_path / 'katilim.db'}", MEDIA_DIR=str(tmp_path / "media"),
                             HTTP_PORT=str(port), PUBLIC_BASE_URL=f"http://127.0.0.1:{port}")

        def cli(*args: str) -> str:
            done = subprocess.run([*katilim(), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
            return done.stdout

        cli("staff", "add", "--telegram", str(CHAT), "--name", "Ayşe Yılmaz", "--role", "admin",
            "--department", "fen_isleri")
        with katilim_run(tmp_path, env, tg):
            yield tg, f"http://127.0.0.1:{port}", cli


@contextmanager
def katilim_run(tmp_path, env, tg):
    """`katilim run` in tmp_path until the block ends, polling the fake Bot API `tg`; its log
    (tmp_path/katilim.log) must hold no traceback."""
    log = (tmp_path / "katilim.log").open("w")
    proc = subprocess.Popen([*katilim(), "run"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        tg.wait_for(lambda s: s.calls_of("getUpdates"), timeout=30)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    output = (tmp_path / "katilim.log").read_text()
    assert "Traceback" not in output, output


def link_from_bot(tg, base: str) -> str:
    before = len(tg.delivered_texts(CHAT))
    tg.push_text(CHAT, "/panel")
    texts = tg.wait_for(lambda s: s.delivered_texts(CHAT)[before:], timeout=20)
    found = re.search(re.escape(base) + r"/panel/login/[A-Za-z0-9_-]+", texts[-1])
    assert found, texts
    return found.group(0)


def test_sign_in_from_the_bot_totp_and_sign_out(running, page):
    tg, base, cli = running
    link = link_from_bot(tg, base)
    sent = tg.calls_of("sendMessage")[-1]
    assert sent.params.get("link_preview_options") == {"is_disabled": True}  # no preview spends or shows it

    # the link opens a page with a button; the button signs in
    page.goto(link)
    assert page.title().startswith("Personel girişi")
    assert page.get_by_text("Ayşe Yılmaz olarak giriş yapmak üzeresiniz").is_visible()
    screenshot(page, "panel-login-confirm")
    page.get_by_role("button", name="Giriş yap").click()
    page.wait_for_url(base + "/panel/")          # the home page: the dashboard
    assert page.get_by_role("heading", name="Pano", level=1).is_visible()
    screenshot(page, "panel-dashboard")
    page.get_by_role("link", name="Hesabım", exact=True).click()
    page.wait_for_url(base + "/panel/account")
    assert page.get_by_role("heading", name="Hesabım", level=1).is_visible()
    assert page.get_by_role("link", name="Personel", exact=True).is_visible()  # an admin's navigation
    screenshot(page, "panel-account")

    # keyboard: the first Tab reaches the skip link, which moves to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "İçeriğe geç"
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"  # visible focus

    # TOTP enrolment: the code comes from the secret the page shows
    page.get_by_role("link", name="İki adımlı doğrulamayı aç").click()
    page.wait_for_url(base + "/panel/account/totp")
    assert page.get_by_role("img", name="Doğrulama uygulaması için karekod").is_visible()
    screenshot(page, "panel-totp-enrol")
    secret = page.locator("code.secret").inner_text().replace(" ", "")
    totp = pyotp.TOTP(secret)
    enrolled_with = totp.now()
    page.get_by_label("Uygulamanın gösterdiği 6 haneli kod").fill(enrolled_with)
    page.get_by_role("button", name="Kodu doğrula ve aç").click()
    page.wait_for_url(re.compile(r".*/panel/account\?notice=totp_on$"))
    assert page.get_by_role("status").inner_text().startswith("İki adımlı doğrulama açıldı")
    assert page.get_by_text("Açık", exact=True).is_visible()

    # sign out, then in again: now the code is asked for (and one already used is refused)
    page.get_by_role("button", name="Çıkış yap").click()
    page.wait_for_url(re.compile(r".*/panel/login\?notice=signed_out$"))
    screenshot(page, "panel-signed-out")
    page.goto(base + "/panel/account")
    page.wait_for_url(base + "/panel/login")
    page.goto(link)  # the first link was spent
    assert page.get_by_text(t_in("tr", "panel.login.refused_used")).is_visible()
    page.goto(cli("staff", "login-link", "1").strip())
    page.get_by_role("button", name="Giriş yap").click()
    page.wait_for_url(base + "/panel/login/totp")
    page.get_by_label("Doğrulama kodu").fill(enrolled_with)  # used once already
    page.get_by_role("button", name="Doğrula").click()
    assert page.get_by_role("alert").inner_text().startswith("Kod doğru değil ya da daha önce kullanıldı")
    screenshot(page, "panel-totp-signin")
    page.get_by_label("Doğrulama kodu").fill(totp.at(datetime.now(timezone.utc) + timedelta(seconds=30)))
    page.get_by_role("button", name="Doğrula").click()
    page.wait_for_url(base + "/panel/")
    page.goto(base + "/panel/account")

    # the admin adds a colleague with a role and departments
    page.get_by_role("link", name="Personel", exact=True).click()
    page.get_by_role("link", name="Personel ekle").click()
    page.get_by_label("Ad soyad", exact=True).fill("Mehmet Kaya")
    page.get_by_label("Rol", exact=True).select_option("viewer")
    page.get_by_label("Zabıta Müdürlüğü").check()
    page.get_by_label("Terminal adı", exact=True).fill("mehmet")
    screenshot(page, "panel-staff-new")
    page.get_by_role("button", name="Kaydet").click()
    page.wait_for_url(re.compile(r".*/panel/staff/2\?notice=staff_added$"))
    page.get_by_role("link", name="← Personel listesi").click()
    row = page.get_by_role("row", name=re.compile("Mehmet Kaya"))
    assert "İzleyici" in row.inner_text() and "Zabıta Müdürlüğü" in row.inner_text()
    screenshot(page, "panel-staff-list")

    # a phone-size screen: one column, nothing wider than the screen
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(base + "/panel/account")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "panel-account-phone")
    page.goto(base + "/panel/staff")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "panel-staff-phone")


def test_the_console_sends_no_inline_script_and_refuses_a_page_without_its_token(running, page):
    tg, base, cli = running
    page.goto(cli("staff", "login-link", "1").strip())
    page.get_by_role("button", name="Giriş yap").click()
    page.wait_for_url(base + "/panel/")
    assert page.evaluate("document.scripts.length") == 0    # the dashboard needs no script
    page.goto(base + "/panel/account")
    assert page.evaluate("document.scripts.length") == 0
    # a form whose CSRF field was removed (a page another site built would have none) is refused
    page.evaluate("document.querySelector('form[action=\"/panel/account/language\"] input[name=csrf]').remove()")
    page.get_by_label("Dil", exact=True).select_option("en")
    page.get_by_role("button", name="Kaydet").click()
    assert page.get_by_role("heading", level=1).inner_text() == "Bu işlem yapılamadı"
    screenshot(page, "panel-refused-csrf")
    page.goto(base + "/panel/account")
    assert page.get_by_role("heading", name="Hesabım", level=1).is_visible()  # unchanged: still Turkish
