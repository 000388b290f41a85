"""The admins' pages in a real browser (Chromium through Playwright, tests/browser.py) against a
real `katilim run`: an admin creates an Open311 key (shown once, with a copy button), revokes it
after the confirmation, and reads the audit log with a filter; on a phone-size screen too.
Screenshots: tests/artifacts/panel-apikeys*.png, panel-audit*.png."""
from __future__ import annotations

import re

from tests.browser import browser, page, screenshot  # noqa: F401  (fixtures)
from tests.test_panel_browser import running  # noqa: F401  (fixture: katilim run with an admin, staff 1)


def test_an_admin_creates_and_revokes_a_key_and_reads_the_audit_log(running, page):
    tg, base, cli = running
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    page.goto(cli("staff", "login-link", "1").strip())
    page.get_by_role("button", name="Giriş yap").click()
    page.wait_for_url(base + "/panel/")

    # API keys: from the navigation, a new key with the full scope
    page.get_by_role("link", name="API anahtarları", exact=True).click()
    page.wait_for_url(base + "/panel/apikeys")
    assert page.get_by_text("Henüz API anahtarı yok.").is_visible()
    page.get_by_label("Ad", exact=True).fill("crm")
    page.get_by_label("Tam", exact=True).check()
    page.get_by_role("button", name="Anahtar oluştur").click()
    assert page.get_by_role("heading", name="“crm” anahtarı oluşturuldu").is_visible()
    secret = page.get_by_label("Anahtar (Tam)").input_value()
    assert re.fullmatch(r"k311_[A-Za-z0-9_-]{43}", secret)
    page.get_by_role("button", name="Kopyala").click()
    page.get_by_role("button", name="Kopyalandı").wait_for(timeout=5000)
    assert page.evaluate("navigator.clipboard.readText()") == secret
    screenshot(page, "panel-apikeys-created")
    page.goto(base + "/panel/apikeys")
    assert secret not in page.content()
    row = page.get_by_role("row", name=re.compile("crm"))
    assert "Tam" in row.inner_text() and "Etkin" in row.inner_text() and secret[:12] in row.inner_text()
    screenshot(page, "panel-apikeys")

    # revoke, after the confirmation page
    row.get_by_role("link", name=re.compile("İptal et")).click()
    assert page.get_by_role("heading", name="“crm” anahtarını iptal et", level=1).is_visible()
    screenshot(page, "panel-apikeys-revoke")
    page.get_by_role("button", name="Evet, iptal et").click()
    page.wait_for_url(re.compile(r".*/panel/apikeys\?notice=key_revoked$"))
    assert page.get_by_role("status").inner_text() == "Anahtar iptal edildi."
    assert "İptal edildi" in page.get_by_role("row", name=re.compile("crm")).inner_text()

    # the audit log: newest first, the admin shown with their name, a filter by action
    page.get_by_role("link", name="Denetim kaydı", exact=True).click()
    page.wait_for_url(base + "/panel/audit")
    first = page.locator("table.audit tbody tr").first
    assert "apikey.revoked" in first.inner_text() and "staff:1 Ayşe Yılmaz" in first.inner_text()
    screenshot(page, "panel-audit")
    page.get_by_label("İşlem", exact=True).select_option("apikey.revoked")
    page.get_by_role("button", name="Süz", exact=True).click()
    assert page.locator("#count").inner_text() == "1 kayıt · sayfa 1/1"
    assert page.locator("table.audit tbody tr").count() == 1
    screenshot(page, "panel-audit-filtered")

    # keyboard: the filter's fields in order
    page.get_by_label("Kim", exact=True).focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "a-action"

    # a phone-size screen: nothing wider than the screen
    page.set_viewport_size({"width": 375, "height": 740})
    for path, name in (("/panel/audit", "panel-audit-phone"), ("/panel/apikeys", "panel-apikeys-phone")):
        page.goto(base + path)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path
        screenshot(page, name)
