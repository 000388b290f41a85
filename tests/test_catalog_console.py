"""The catalog's staff-console and matching fields (issues 14 and 15): departments, response-time
targets, working hours, response templates, synonyms and geometry; the Buca sample carries them
all, and each new field's errors name the file, the line and the field."""
from __future__ import annotations

import re
from datetime import time

import pytest

from bot.catalog import TEMPLATE_STATUSES, CatalogError, load_catalog
from bot.settings import SAMPLE_CATALOG
from conversations import geo
from conversations.text import fold, match_options
from tests.support.chat import Chat
from tests.test_storage import SAMPLE, _broken, assert_catalog_error

ROAD_SYNONYMS = SAMPLE[SAMPLE.index('key = "road"'):].split("synonyms.en", 1)[0].split("synonyms.tr = ", 1)[1]
CASES = {
    "department unknown": ('department = "temizlik_isleri"', 'department = "temizlik"',
                           "categories[3].department", "unknown department 'temizlik'"),
    "department name needs tr": ('name = { tr = "Zabıta Müdürlüğü", en = "Municipal Police", ar = "الشرطة البلدية" }',
                                 'name = { en = "Municipal Police" }', "departments[5].name",
                                 "the Turkish (tr) text is required"),
    "department key": ('key = "cevre_koruma"', 'key = "Çevre Koruma"', "departments[6].key", "lowercase letters"),
    "duplicate department": ('key = "sosyal_destek"', 'key = "zabita"', "departments[7].key", "duplicate key 'zabita'"),
    "sla_hours not a number": ("sla_hours = 8\n", 'sla_hours = "one day"\n', "categories[3].sla_hours",
                               "number of hours above 0"),
    "sla_hours zero": ("sla_hours = 8\n", "sla_hours = 0\n", "categories[3].sla_hours", "above 0"),
    "sla_calendar not a boolean": ("sla_calendar = true  #", 'sla_calendar = "yes"  #', "categories[6].sla_calendar",
                                   "expected true"),
    "synonyms language": ("synonyms.tr = " + ROAD_SYNONYMS, "synonyms.de = " + ROAD_SYNONYMS,
                          "categories[1].synonyms.de", "unknown language 'de'"),
    "synonyms not a list": ("synonyms.tr = " + ROAD_SYNONYMS, 'synonyms.tr = "çukur"\n',
                            "categories[1].synonyms.tr", "a list of words"),
    "synonym twice": ('"lamba", "ışık"', '"lamba", "çukur"', "categories[2].synonyms.tr",
                      "'çukur' already names the category 'road'"),
    "days": ('days = "mon-fri"', 'days = "pazartesi-cuma"', "municipality.working_hours.days", '"mon-fri"'),
    "hours overlap": ('hours = "08:30-12:30,13:30-17:30"', 'hours = "08:30-12:30,12:00-17:30"',
                      "municipality.working_hours.hours", "in order"),
    "hours format": ('hours = "08:30-12:30,13:30-17:30"', 'hours = "8.30 to 17.30"',
                     "municipality.working_hours.hours", "08:30-12:30,13:30-17:30"),
    "half_day_end": ('half_day_end = "13:00"', 'half_day_end = "1 pm"', "municipality.working_hours.half_day_end",
                     "a time of day"),
    "extra_closed_days": ("extra_closed_days = []", 'extra_closed_days = ["2026-05-32"]',
                          "municipality.working_hours.extra_closed_days", "'2026-05-32' is not a date"),
    "working_hours unknown field": ('half_day_end = "13:00"', 'half_day = "13:00"',
                                    "municipality.working_hours.half_day", "unknown field"),
    "template status": ('status = "seen"', 'status = "görüldü"', "response_templates[1].status",
                        "seen, in_progress, resolved, rejected"),
    "template category": ('categories = ["animals"]', 'categories = ["kediler"]', "response_templates[4].categories",
                          "unknown category 'kediler'"),
    "template placeholder": ("{code} numaralı bildiriminizi çalışma programımıza aldık.",
                             "{kod} numaralı bildiriminizi çalışma programımıza aldık.",
                             "response_templates[3].text", "unknown placeholder {kod} in the tr text"),
    "template title needs tr": ('title = { tr = "Sorun giderildi", en = "Problem fixed", ar = "تمت معالجة المشكلة" }',
                                'title = { en = "Problem fixed" }', "response_templates[5].title",
                                "the Turkish (tr) text is required"),
    "centre out of range": ("centre = [38.35968, 27.25541]", "centre = [27.25541, 238.35968]",
                            "neighbourhoods[1].centre", "is not a [latitude, longitude]"),
    "centre not a pair": ("centre = [38.37766, 27.20600]", "centre = 38.37766", "neighbourhoods[3].centre",
                          "expected [latitude, longitude]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_new_catalog_fields_name_file_line_and_field(tmp_path, case):
    assert_catalog_error(tmp_path, *CASES[case])


def test_a_boundary_needs_three_points_and_names_its_line(tmp_path):
    start = SAMPLE.index("[[neighbourhoods]]\nname = \"Zafer\"")
    old = SAMPLE[start:].split("boundary = ", 1)[1].split("\n", 1)[0]
    path, line = _broken(tmp_path, "boundary = " + old, "boundary = [[38.3, 27.2], [38.4, 27.3]]")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}:{line}: neighbourhoods[44].boundary: expected a list of at least 3")


def test_the_district_boundary_error_names_its_line(tmp_path):
    line_text = next(t for t in SAMPLE.splitlines() if t.startswith("boundary = ") and "38.28940, 27.29960" in t)
    path, line = _broken(tmp_path, line_text, 'boundary = [[38.3, 27.2], [38.4, "x"], [38.5, 27.1]]')
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert str(info.value).startswith(f"{path}:{line}: municipality.boundary: expected [latitude, longitude]")


def test_a_catalog_without_the_new_fields_still_loads(tmp_path):
    """An older catalog (no departments, templates, working hours, synonyms or geometry) loads
    with the defaults: a Turkish public office's hours, nothing routed."""
    text = "\n".join(line for line in SAMPLE.splitlines()
                     if not line.startswith(("department", "sla_", "synonyms.", "centre", "boundary")))
    text = text.split("[municipality.working_hours]")[0] + "\n[[neighbourhoods]]" + \
        text.split("[[neighbourhoods]]", 1)[1].split("# Response templates")[0]
    path = tmp_path / "eski.toml"
    path.write_text(text, encoding="utf-8")
    catalog = load_catalog(path)
    assert catalog.departments == () and catalog.response_templates == ()
    assert catalog.category("road").department == "" and catalog.category("road").sla_hours is None
    hours = catalog.municipality.working_hours
    assert hours.days == frozenset(range(5)) and hours.hours_per_day == 8
    assert catalog.municipality.boundary == () and catalog.neighbourhood("kozagac").centre is None


# ---------------------------------------------------------------- the Buca sample
def test_the_buca_sample_routes_every_category_with_a_target():
    catalog = load_catalog(SAMPLE_CATALOG)
    keys = {d.key for d in catalog.departments}
    assert {"fen_isleri", "temizlik_isleri", "park_bahceler", "veteriner_isleri", "zabita", "sosyal_destek"} <= keys
    for d in catalog.departments:
        assert all(d.name.values.get(lang) for lang in ("tr", "en", "ar")), d.key
        assert d.name.get("tr").endswith(("Müdürlüğü", "Zabıta Müdürlüğü")), d.key
    for c in catalog.categories:
        assert c.department in keys and c.sla_hours and 0 < c.sla_hours <= 40, c.key
    assert catalog.category("animals").sla_calendar and not catalog.category("road").sla_calendar
    assert catalog.category("waste").department == "temizlik_isleri"
    assert catalog.category("animals").department == "veteriner_isleri"
    hours = catalog.municipality.working_hours
    assert hours.hours == ((time(8, 30), time(12, 30)), (time(13, 30), time(17, 30)))
    assert hours.half_day_end == time(13, 0) and hours.extra_closed_days == frozenset()


def test_the_buca_sample_has_templates_for_every_status_in_three_languages():
    catalog = load_catalog(SAMPLE_CATALOG)
    for status in TEMPLATE_STATUSES:
        found = catalog.templates_for(status, "road")
        assert found, status
        for template in found:
            for part in (template.title, template.text):
                assert all(part.values.get(lang) for lang in ("tr", "en", "ar")), template.key
            assert "{code}" in template.text.get("tr") and "{code}" in template.text.get("ar")
    # a category's own template comes first; other categories do not get it
    assert catalog.templates_for("in_progress", "animals")[0].key == "in_progress_vet"
    assert "in_progress_vet" not in {t.key for t in catalog.templates_for("in_progress", "road")}
    # "biz" throughout: the municipality never speaks in the first person singular ("yaptım")
    for template in catalog.response_templates:
        assert re.search(r"\w(dık|dik|duk|dük|tık|tik|yoruz|eceğiz|acağız)\b", template.text.get("tr")), template.key
        assert not re.search(r"\w(dım|dim|tım|tim|yorum|eceğim|acağım)\b", template.text.get("tr")), template.key


def test_the_buca_sample_has_synonyms_in_every_language_and_each_names_one_category():
    catalog = load_catalog(SAMPLE_CATALOG)
    options = [(c.key, c.words()) for c in catalog.categories]
    for c in catalog.categories:
        assert set(c.synonyms) == {"tr", "en", "ar"} and all(c.synonyms.values()), c.key
    expected = {"çukur": "road", "asfalt": "road", "lamba": "lighting", "ışık": "lighting", "ISIK": "lighting",
                "köpek": "animals", "kedi": "animals", "kopek": "animals", "çöp": "waste", "dog": "animals",
                "pothole": "road", "streetlight": "lighting", "كلب": "animals", "قمامة": "waste", "rögar": "water",
                "gürültü": "noise", "rampa": "accessibility", "otopark": "traffic", "ağaç": "parks"}
    for word, key in expected.items():
        assert match_options(word, options)[:1] == [key], word
    folded = [fold(w) for c in catalog.categories for lang in c.synonyms for w in c.synonyms[lang]]
    assert len(folded) == len(set(folded))


def test_the_buca_sample_places_its_mahalles_except_7_eylul():
    catalog = load_catalog(SAMPLE_CATALOG)
    assert len(catalog.municipality.boundary) == 188
    placed = [n for n in catalog.neighbourhoods if n.centre and n.boundary]
    assert len(placed) == 43 and len(catalog.neighbourhoods) == 44
    assert catalog.neighbourhood("7_eylul").centre is None and catalog.neighbourhood("7_eylul").boundary == ()
    # every centre is in its own polygon, and the pin finds that mahalle again
    for n in placed:
        assert geo.point_in_polygon(n.centre, n.boundary), n.name
        assert geo.mahalle_of(n.centre, catalog.neighbourhoods) == n.key, n.name
    assert "MIT" in SAMPLE and "not official" in SAMPLE and "İzmir Büyükşehir" in SAMPLE
    assert "7 Eylül" in SAMPLE.split("[[departments]]")[0]


def test_typing_a_synonym_finds_the_category(make_app):
    app = make_app()
    ayse = Chat(app, "ayse-synonym")
    ayse.onboard(lang="tr", mahalle="kozagac")
    for word, state_key in (("köpek", "animals"), ("lamba", "lighting"), ("çukur", "road"), ("cop", "waste")):
        ayse.text("/bildir")
        assert ayse.state == "report.category"
        ayse.text(word)
        assert ayse.state == "report.location", word
        assert _category(ayse) == state_key, word
        ayse.text("/iptal")
    john = Chat(app, "john-synonym")
    john.onboard(lang="en", mahalle="kozagac")
    john.text("/report")
    john.text("stray dog")
    assert john.state == "report.location" and _category(john) == "animals"


def _category(chat: Chat) -> str:
    from sqlmodel import select

    from storage.db import transaction
    from storage.models import ChannelIdentity, ConversationSession

    with transaction(chat.app.db) as db:
        identity = db.exec(select(ChannelIdentity).where(ChannelIdentity.address == chat.address)).one()
        return db.get(ConversationSession, identity.resident_id).data["category"]
