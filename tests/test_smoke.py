"""Smoke: the application as `katilim run` builds it (migrations applied, every feature wired), on
SQLite and PostgreSQL, carries a resident from first contact to a filed report, and what it says
and stores along the way is what the catalog and the rules say."""
from conversations.i18n import t_in, translator
from storage import reports as rp
from storage.db import transaction
from storage.models import CONSENT_PURPOSES
from tests.support.chat import Chat
from tests.support.texts import notice_summary, onboarding_thanks


def test_a_resident_onboards_and_files_a_report(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse")

    ayse.say("/start")
    assert ayse.state == "onboarding.language" and ayse.keys() == ["lang:tr", "lang:en", "lang:ar"]
    ayse.tap("lang:tr")
    assert [out.text for out in ayse.last] == [notice_summary(app, "tr")]
    assert ayse.keys() == ["all", "choose", "none"]
    ayse.tap("all")
    assert ayse.last[0].text == onboarding_thanks("tr")
    assert ayse.state == "mahalle.pick"
    ayse.tap("skip")
    assert ayse.state == "menu" and ayse.last[-1].text == t_in("tr", "menu.title")
    assert [(c.purpose, c.granted) for c in ayse.consents()] == [(p, True) for p in CONSENT_PURPOSES]

    ayse.say("/bildir")
    assert ayse.state == "report.category"
    ayse.tap("c:road")
    assert ayse.state == "report.location"
    ayse.location(38.38500, 27.17500)                 # in Buca: its mahalle, confirmed in one tap
    assert ayse.state == "report.pin"
    ayse.tap("yes")
    assert ayse.state == "report.describe"
    ayse.say("Kaldırımda büyük bir çukur var.")
    assert ayse.state == "report.photos"
    ayse.tap("done")
    assert ayse.state == "report.summary"
    ayse.tap("confirm")

    assert ayse.state == "menu"
    with transaction(app.db) as db:
        (report,) = rp.list_for_resident(db, ayse.resident_id)
        assert (report.category, report.status, report.description) == ("road", "new",
                                                                        "Kaldırımda büyük bir çukur var.")
        assert (report.latitude, report.longitude) == (38.385, 27.175)
    saved = t_in("tr", "report.saved", code=report.code, command="/bildirimlerim")
    usual = translator("tr").n("report.usual_workdays", 5)  # the road category's 40 working hours
    assert [out.text for out in ayse.last] == [f"{saved}\n{usual}", t_in("tr", "menu.title")]
