"""Issue 14, residents: mahalles as Turks write them, categories by the words people use, and
descriptions (emoji-only, over-long), through Engine.handle on the console channel and the CLI."""
from __future__ import annotations

import pytest

from conversations.i18n import translator
from storage import reports as rp
from storage.db import transaction
from storage.models import Resident, Staff
from tests.test_reports import CODE, PIN, Chat, _katilim

tr, en, ar = translator("tr"), translator("en"), translator("ar")


def _mahalle_of(app, chat: Chat) -> str | None:
    with transaction(app.db) as db:
        return db.get(Resident, chat.resident_id()).mahalle


# ---------------------------------------------------------------- 6. mahalle as Turks write it
@pytest.mark.parametrize("typed, key", [("Yıldız Mahallesi", "yildiz"), ("yildiz mah.", "yildiz"),
                                        ("kozağaç mh", "kozagac"), ("Buca Koop Mahallesi", "buca_koop"),
                                        ("KOZAĞAÇ MH.", "kozagac"), ("Mah. Yıldız", "yildiz")])
def test_onboarding_takes_the_mahalle_as_typed(make_app, typed, key):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.onboard("tr", typed)
    assert _mahalle_of(app, chat) == key


def test_mahalle_words_in_reports_staff_filters_and_the_cli(make_app, sqlite_url):
    app = make_app(database_url=sqlite_url)
    ayse = Chat(app, "ayse")
    ayse.onboard("tr")
    ayse.text("/bildir")
    ayse.text("çukur")
    ayse.text("Buca Koop Mahallesi")
    assert ayse.state() == "report.street"
    assert ayse.said == tr("report.street_prompt", mahalle="Buca Koop")
    with transaction(app.db) as db:
        db.add(Staff(console="boss"))
        code = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                mahalle="kozagac").code
        other = rp.create_report(db, prefix="BCA", resident_id=None, category="waste", description="çöp",
                                 mahalle="yildiz").code
    boss = Chat(app, "boss")
    boss.onboard("tr")
    boss.text("/raporlar")
    boss.tap("mah")
    boss.text("kozağaç mh")
    assert boss.state() == "staffreport.home"
    boss.tap("st:new")
    assert f"r:{code}" in boss.keys() and f"r:{other}" not in boss.keys()
    listed = _katilim(sqlite_url, "list", "--mahalle", "Yıldız Mahallesi").stdout
    assert other in listed and code not in listed


def test_not_found_is_never_followed_by_we_found_several(make_app):
    app = make_app()
    chat = Chat(app, "ayse")
    chat.text("/start")
    chat.tap("lang:tr")
    chat.tap("all")
    chat.text("ça")                                 # Çağdaş, Çaldıran, Çamlıkule...: which one?
    assert chat.last[-1].text == tr("mahalle.did_you_mean")
    chat.text("Zzyzx Mahallesi")
    assert [o.text for o in chat.last] == [tr("mahalle.not_found"), tr("mahalle.prompt")]
    assert "m:yildiz" in chat.keys() or "page:next" in chat.keys()
