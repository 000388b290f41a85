"""Report triage (issue 15, migration 0017): a new report goes to its category's department with
its due time (working hours and Turkish holidays, or calendar hours), whichever way it is filed
(chat, Open311 POST, the domain operation); staff answers and closings are dated; the free-text search
words follow the catalog's names. On SQLite and PostgreSQL."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import sqlalchemy as sa
from sqlmodel import select

from bot.http import create_http_app
from conversations import worktime
from conversations.domain import reports as domain
from conversations.permissions import Actor
from storage import apikeys
from storage import reports as rp
from storage.db import make_engine, transaction, utcnow
from storage.migrate import upgrade
from tests.support.chat import Chat
from tests.test_reports import CODE, _file

UTC = timezone.utc


def test_a_report_filed_in_the_chat_is_routed_with_its_due_time(make_app, db_url):
    app = make_app(database_url=db_url)
    ayse = Chat(app, "ayse")
    ayse.onboard(lang="tr")
    _file(ayse)                      # "yol": Yol ve kaldırım, fen_isleri, 40 working hours
    ayse.tap("confirm")
    code = CODE.search(ayse.said).group(0)
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.department == "fen_isleri"
        assert report.due_at == worktime.due_at(report.created_at, 40, app.catalog.municipality.working_hours)
        assert report.due_at.tzinfo is not None and report.due_at - report.created_at >= timedelta(hours=40)
        assert report.assignee_id is None and report.first_response_at is None and report.closed_at is None
        # the search words: the code, the category's names in every language, the description
        # (folded: punctuation is a space)
        for word in (code.lower().replace("-", " "), "yol ve kaldirim", "roads and pavements",
                     "kaldirimda buyuk bir cukur var"):
            assert word in report.search_text


async def test_an_open311_post_is_routed_too(make_app, db_url):
    app = make_app(database_url=db_url, public_base_url="https://katilim.example.org/")
    with transaction(app.db) as db:
        key = apikeys.create_key(db, "crm", scope="full")[1]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_http_app(app)),
                                 base_url="http://test") as c:
        created = await c.post("/open311/v2/requests.json", data={
            "api_key": key, "service_code": "animals", "address_id": "kozagac",
            "description": "Yaralı köpek"})
    assert created.status_code == 201, created.text
    code = created.json()[0]["service_request_id"]
    with transaction(app.db) as db:
        report = rp.get_by_code(db, code)
        assert report.department == "veteriner_isleri"
        # sla_calendar: 24 hours are 24 hours, weekends and nights included
        assert report.due_at - report.created_at == timedelta(hours=24)
        assert "kozagac" in report.search_text and "yarali kopek" in report.search_text


def test_due_times_count_working_hours_weekends_and_holidays(make_app, db_url):
    app = make_app(database_url=db_url)
    with transaction(app.db) as db:
        def filed(category, local):
            created = local.astimezone(UTC)
            return domain.file(db, Actor.system(), prefix="BCA", category=category, description="x",
                               mahalle="kozagac", catalog=app.catalog, now=created)

        istanbul = timezone(timedelta(hours=3))
        # Friday 4 December 2026, 16:00: 40 working hours are 1.5 on Friday, 32 Monday to
        # Thursday, 6.5 on the next Friday (08:30-12:30, 13:30-16:00)
        road = filed("road", datetime(2026, 12, 4, 16, 0, tzinfo=istanbul))
        assert road.due_at == datetime(2026, 12, 11, 13, 0, tzinfo=UTC)
        # Wednesday 28 October 2026, 12:00 (half day until 13:00, so 12:00-12:30), 29 October a
        # holiday, then 7.5 hours on Friday 30 October: 08:30-12:30, 13:30-17:00
        waste = filed("waste", datetime(2026, 10, 28, 12, 0, tzinfo=istanbul))
        assert (waste.department, waste.due_at) == ("temizlik_isleri", datetime(2026, 10, 30, 14, 0, tzinfo=UTC))
        # a category without a target has no due time; a category the catalog lacks, no department
        stray = domain.file(db, Actor.system(), prefix="BCA", category="gone", description="x",
                            catalog=app.catalog, now=utcnow())
        assert (stray.department, stray.due_at) == ("", None)
        # the mahalle's name is searchable by its folded form
        assert "kozagac" in road.search_text


def test_first_response_and_closing_are_dated(make_app, db_url):
    app = make_app(database_url=db_url)
    start = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    with transaction(app.db) as db:
        a = domain.file(db, Actor.system(), prefix="BCA", category="road", description="a", catalog=app.catalog,
                        now=start)
        b = domain.file(db, Actor.system(), prefix="BCA", category="road", description="b", catalog=app.catalog,
                        now=start)
        rp.set_status(db, a.code, "seen", "staff:1", now=start + timedelta(hours=1))
        rp.set_status(db, a.code, "in_progress", "staff:2", now=start + timedelta(hours=2))
        rp.set_status(db, a.code, "resolved", "staff:2", now=start + timedelta(hours=3))
        rp.merge(db, b.code, a.code, "staff:3", now=start + timedelta(hours=4))
    with transaction(app.db) as db:
        a, b = rp.get_by_code(db, a.code), rp.get_by_code(db, b.code)
        assert a.first_response_at == start + timedelta(hours=1)      # the first answer only
        assert a.closed_at == start + timedelta(hours=3)
        assert (b.first_response_at, b.closed_at) == (start + timedelta(hours=4), start + timedelta(hours=4))
        # the reporter reopens it: no longer closed; the first answer stays
        assert rp.reopen(db, a.code, None, now=start + timedelta(hours=5)) == "reopened"
    with transaction(app.db) as db:
        a = rp.get_by_code(db, a.code)
        assert a.closed_at is None and a.first_response_at == start + timedelta(hours=1)


def test_migration_fills_the_search_words_and_closing_of_existing_reports(db_url):
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0016_panel")
        with engine.begin() as conn:
            for code, status in (("BCA-2026-000001", "new"), ("BCA-2026-000002", "resolved")):
                conn.execute(sa.text(
                    "INSERT INTO report (code, category, description, mahalle, address, status, reject_reason, "
                    "channel, created_at, updated_at, reopened_count, supporters) VALUES (:c, 'road', "
                    "'ÇUKUR İçinde', 'kozagac', '', :s, '', 'console', :t, :t, 0, 0)"),
                    {"c": code, "s": status, "t": "2026-12-01 09:00:00.000000"})
        upgrade(engine)
        with transaction(engine) as db:
            rows = list(db.exec(select(rp.Report).order_by(rp.Report.id)))
            assert [r.search_text for r in rows] == ["bca 2026 000001 road kozagac cukur icinde",
                                                     "bca 2026 000002 road kozagac cukur icinde"]
            assert rows[0].closed_at is None and rows[1].closed_at == rows[1].updated_at
            assert [r.department for r in rows] == ["", ""]
        indexes = {i["name"] for i in sa.inspect(engine).get_indexes("report")}
        assert {"ix_report_status_created", "ix_report_department_status", "ix_report_mahalle_created",
                "ix_report_department", "ix_report_assignee_id", "ix_report_due_at", "ix_report_created_id",
                "ix_report_updated_id"} <= indexes
    finally:
        engine.dispose()
