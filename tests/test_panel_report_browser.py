"""The report page in a real browser (Chromium through Playwright) against a real `katilim run`
with Telegram through the fake Bot API server, end to end: a resident files a report with a pin
and a photo in English over Telegram, a staff member sends /panel, opens the link the bot sent,
opens the report from the list, sees the photo, changes its status starting from a response template, and the
resident receives the message in English over the fake Bot API. Screenshots:
tests/artifacts/panel-report*.png."""
from __future__ import annotations

import re
import time

from conversations.i18n import t_in
from tests.browser import browser, page, screenshot  # noqa: F401  (fixtures)
from tests.media_support import plain_jpeg
from tests.test_panel_browser import link_from_bot, running  # noqa: F401  (fixture)

RESIDENT = 7301
PIN = (38.38500, 27.17500)
CODE = re.compile(r"BCA-\d{4}-\d{6}")


def after(tg, push, *, quiet: float = 0.5, timeout: float = 20) -> list[str]:
    """Push an update and wait for the bot's answer to settle; the texts it sent."""
    before = len(tg.sent_messages(RESIDENT))
    push()
    tg.wait_for(lambda s: len(s.sent_messages(RESIDENT)) > before, timeout=timeout)
    seen, still = len(tg.sent_messages(RESIDENT)), time.monotonic()
    while time.monotonic() - still < quiet:
        time.sleep(0.05)
        if len(tg.sent_messages(RESIDENT)) != seen:
            seen, still = len(tg.sent_messages(RESIDENT)), time.monotonic()
    return [c.text or c.params.get("caption") or "" for c in tg.sent_messages(RESIDENT)[before:]]


def test_a_report_from_telegram_triaged_in_the_console(running, page):
    tg, base, cli = running

    # -- the resident, in English, files a report with a pin and a photo
    after(tg, lambda: tg.push_text(RESIDENT, "/start", language_code="en"))
    for step in ("lang:en", "all", "skip"):
        after(tg, lambda step=step: tg.push_callback(RESIDENT, step))
    after(tg, lambda: tg.push_text(RESIDENT, "/report", language_code="en"))
    after(tg, lambda: tg.push_callback(RESIDENT, "c:road"))
    after(tg, lambda: tg.push_location(RESIDENT, *PIN))
    after(tg, lambda: tg.push_callback(RESIDENT, "yes"))          # the pin's mahalle, in one tap
    after(tg, lambda: tg.push_text(RESIDENT, "A deep pothole in front of number 12, cars swerve around it.",
                                   language_code="en"))
    said = after(tg, lambda: tg.push_photo(RESIDENT, plain_jpeg(320, 240, (70, 70, 60))))
    assert any("1/3" in s for s in said), said
    after(tg, lambda: tg.push_callback(RESIDENT, "done"))
    after(tg, lambda: tg.push_callback(RESIDENT, "confirm"))
    saved = tg.wait_for(lambda s: [t for t in s.delivered_texts(RESIDENT) if CODE.search(t)], timeout=20)
    code = CODE.search(saved[-1]).group(0)

    # -- the staff member signs in through the link the bot sent for /panel
    link = link_from_bot(tg, base)
    page.goto(link)
    page.get_by_role("button", name="Giriş yap").click()
    page.wait_for_url(base + "/panel/")

    # -- from the list to the report page: the photo (served to this session only), the pin, the facts
    page.get_by_role("link", name="Bildirimler", exact=True).click()
    page.wait_for_url(base + "/panel/reports")
    page.get_by_role("link", name=code, exact=True).click()
    page.wait_for_url(f"{base}/panel/reports/{code}")
    assert page.get_by_role("heading", level=1).inner_text().startswith(code)
    photo = page.get_by_role("img", name=f"{code} bildiriminin 1. fotoğrafı")
    assert photo.is_visible()
    page.wait_for_function("document.querySelector('figure.media img').naturalWidth === 320")
    assert page.locator("#report-map .leaflet-marker-icon").count() == 1        # Leaflet drew the pin
    facts = page.locator("dl.facts").inner_text()
    assert "Yol ve kaldırım" in facts and "Fen İşleri Müdürlüğü" in facts and "English" in facts
    assert "A deep pothole in front of number 12" in page.locator("p.description").inner_text()
    assert str(RESIDENT) not in page.content() and "resident:" not in page.content()
    screenshot(page, "panel-report")

    # -- a status from a response template, edited, in the resident's language
    page.get_by_label("Yeni durum").select_option("resolved")
    page.get_by_role("button", name="Hazır yanıtı getir").click()             # the templates of "Çözüldü"
    page.get_by_label("Hazır yanıt", exact=True).select_option("resolved_fixed")
    page.get_by_role("button", name="Hazır yanıtı getir").click()
    note = page.get_by_label("Not (English)")
    template = f"We have fixed the problem you reported in {code}. Thank you for letting us know."
    assert note.input_value() == template
    assert page.get_by_text("Alıcıların dili: English (1).").is_visible()
    note.fill(template + " The asphalt was renewed.")
    screenshot(page, "panel-report-status")
    page.get_by_role("button", name="Durumu değiştir ve bildir").click()
    page.wait_for_url(re.compile(r".*\?notice=status_changed$"))
    assert page.get_by_role("status").inner_text() == t_in("tr", "panel.notice.status_changed")
    assert page.locator("h1 .badge").first.inner_text() == "Çözüldü"
    history = page.locator("ol.history").inner_text()
    assert "Durum: Çözüldü · Ayşe Yılmaz" in history and "The asphalt was renewed." in history

    # -- the resident gets it, in English, with the "solved?" buttons, over the fake Bot API
    expected = "\n".join([t_in("en", "report.notify.resolved", code=code, category="Roads and pavements"),
                          t_in("en", "report.notify.note", note=template + " The asphalt was renewed."),
                          t_in("en", "report.notify.resolved_question")])
    tg.wait_for(lambda s: expected in s.delivered_texts(RESIDENT), timeout=30)
    sent = [c for c in tg.sent_messages(RESIDENT) if c.text == expected][-1]
    keys = [b["callback_data"] for row in sent.params["reply_markup"]["inline_keyboard"] for b in row]
    assert keys == [f"rs:yes:{code}", f"rs:no:{code}"]

    # -- a phone-size screen: one column, nothing wider than the screen
    page.set_viewport_size({"width": 375, "height": 740})
    page.goto(f"{base}/panel/reports/{code}")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(page, "panel-report-phone")

    # -- the photo is unreachable without a session
    context = page.context.browser.new_context()
    anonymous = context.new_page()
    photo_src = page.locator("figure.media img").get_attribute("src")
    answer = anonymous.request.get(base + photo_src, max_redirects=0)
    assert answer.status == 303 and answer.headers["location"] == "/panel/login"
    context.close()
