"""The conversation engine through `Engine.handle`, on a real database (SQLite and PostgreSQL).

The state table iterates the states of bot/features.py's registry, so every state a feature declares
later is covered too: in every state, every unusable inbound kind gets a short re-prompt in the resident's
language, and neither the state nor what was collected changes; a typed cancel word (İPTAL,
iptal, Iptal) leaves every state.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from sqlalchemy import event, update
from sqlmodel import select

from bot.features import FEATURES, Feature, build_registry
from conversations.i18n import LANGUAGES, translator
from conversations.messages import Choice, Inbound, Kind, Media, Outbound
from conversations.registry import Router
from conversations.step import IDLE, KIND_NAMES, Go, Stay
from storage.audit import audit
from storage.db import transaction
from storage.models import (
    CONSENT_PURPOSES,
    AuditLog,
    ChannelIdentity,
    ConsentRecord,
    ConversationSession,
    OutboxMessage,
    Resident,
)
from tests.conftest import drop_pg_schema, new_pg_schema_url
from tests.support.chat import Chat
from tests.support.texts import help_text, notice_summary, onboarding_thanks

CHANNEL = "console"
REGISTRY = build_registry()
STATES = REGISTRY.states
ONBOARDING_PATHS = ("onboarding.language", "onboarding.notice", "onboarding.purpose")


# ---------------------------------------------------------------- helpers
def T(lang: str, key: str, **kw) -> str:
    """The catalog's text for a key in a language (the key must really be translated)."""
    t = translator(lang)
    assert t.has(key), f"{key} has no {lang} translation"
    return t(key, **kw)


def shape(out: Outbound) -> tuple[str, list[tuple[str, str]]]:
    return out.text, [(c.key, c.label) for c in out.choices]


def start_onboarding(chat: Chat) -> list[Outbound]:
    replies = chat.text("merhaba")
    assert chat.state == "onboarding.language"
    return replies


def onboard(chat: Chat, consent: str | list[bool] = "all", mahalle: str | None = None) -> list[Outbound]:
    """First contact by text → language → notice → consents (→ mahalle) → menu; the last replies."""
    return chat.onboard(consent, mahalle=mahalle, first="merhaba").last


def menu_key_for(target: str) -> str | None:
    return next((item.key for item in REGISTRY.menu_items if item.target == target), None)


def reach(chat: Chat, name: str) -> list[Outbound]:
    """Bring a resident (new, or onboarded and anywhere) to a state by its normal path when that is
    simple, else enter it with empty data. Returns the replies that showed the state's prompt."""
    if name == "onboarding.language":
        return start_onboarding(chat)
    if name == "onboarding.notice":
        start_onboarding(chat)
        return chat.choose(f"lang:{chat.lang}")
    if name == "onboarding.purpose":
        start_onboarding(chat)
        chat.choose(f"lang:{chat.lang}")
        return chat.choose("choose")
    identity, resident, session = chat.rows()
    if resident is None or resident.onboarded_at is None or session is None:
        replies = onboard(chat)
    else:
        replies = chat.cmd("menu")
    if STATES[name].staff_only and not chat.staff:
        chat.make_staff()
    if name == IDLE:
        return replies
    if name == "data.delete_confirm":
        replies = chat.cmd("verilerimisil")
    elif menu_key_for(name):
        replies = chat.choose(menu_key_for(name))
    if chat.where()[0] == name:
        return replies
    # Entered with empty data; the resident then writes something unusable and sees the prompt.
    chat.set_session(name, {})
    replies = chat.cmd("foo")
    assert replies[0].text == T(chat.lang, "engine.unknown_command", command="/foo")
    return replies[1:]


def reach_or_skip(chat: Chat, name: str) -> list[Outbound]:
    prompt = reach(chat, name)
    now_in = chat.where()[0]
    if now_in != name:
        pytest.skip(f"{name} leaves at once in this configuration (to {now_in})")
    return prompt


# ---------------------------------------------------------------- the state table
@dataclass
class Unusable:
    label: str
    kind: Kind
    fields: dict[str, Any] = field(default_factory=dict)
    # (key, kwargs) of the expected first reply, given the resident's language
    reason: Callable[[str], tuple[str, dict[str, Any]]] | None = None


def _wrong_kind(kind: Kind):
    return lambda lang: ("engine.wrong_kind", {"what": T(lang, KIND_NAMES[kind])})


MEDIA = [Media(ref="file-abc", content_type="image/jpeg", size=2048, filename="a.jpg")]
UNUSABLE = [
    Unusable("sticker", Kind.STICKER),
    Unusable("photo", Kind.PHOTO, {"media": MEDIA}),
    Unusable("voice", Kind.VOICE, {"media": [Media(ref="file-v", content_type="audio/ogg", size=900)]}),
    Unusable("location", Kind.LOCATION, {"latitude": 38.39, "longitude": 27.17}),
    Unusable("contact", Kind.CONTACT, {"phone": "+905551112233"}),
    Unusable("document", Kind.DOCUMENT, {"media": [Media(ref="file-d", content_type="application/pdf")]}),
    Unusable("other", Kind.OTHER),
    Unusable("5000 characters", Kind.TEXT, {"text": "ç" * 5000},
             lambda lang: ("engine.too_long", {"limit": 2000})),
    Unusable("empty text", Kind.TEXT, {"text": ""}, lambda lang: ("engine.empty", {})),
    Unusable("control characters", Kind.TEXT, {"text": "\x00\x01\x07\x08\x1b\x7f\u200b\ufeff\r\n\t"},
             lambda lang: ("engine.empty", {})),
    Unusable("unknown command", Kind.COMMAND, {"command": "foo", "text": "/foo"},
             lambda lang: ("engine.unknown_command", {"command": "/foo"})),
    Unusable("stale choice", Kind.CHOICE, {"choice": "nope"}, lambda lang: ("engine.stale_choice", {})),
]
for _u in UNUSABLE:
    if _u.reason is None:
        _u.reason = _wrong_kind(_u.kind)

STATE_NAMES = sorted(STATES)
CANCEL_SPELLINGS = ("İPTAL", "iptal", "Iptal")   # typed in the tr, en and ar residents' runs


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def shared_app(request, tmp_path_factory):
    """One application per database for the state table (residents are independent by address):
    as `db_url`, on SQLite and on a fresh PostgreSQL schema, but migrated once per module."""
    from bot.app import build_app
    from bot.settings import load_settings

    folder = tmp_path_factory.mktemp("engine")
    schema = None
    if request.param == "sqlite":
        url = f"sqlite:///{folder / 'katilim.db'}"
    else:
        url, schema = new_pg_schema_url()
    # WhatsApp configured (never contacted: no channel is started) so /bagla's states are reachable
    app = build_app(load_settings(database_url=url, media_dir=folder / "media", http_port=0,
                                  telegram_bot_token="", twilio_account_sid="AC" + "0" * 32,
                                  twilio_auth_token="test", twilio_whatsapp_from="whatsapp:+905550000000",
                                  _env_file=None))
    yield app
    app.db.dispose()
    if schema:
        drop_pg_schema(schema)


class Residents:
    """Onboarded residents kept between the state-table tests of one database (one per language,
    staff or not): each test brings one to its state by /menu and the state's path, which costs far
    less than a new resident's onboarding for each of the many registered states."""

    def __init__(self, app) -> None:
        self.app = app
        self.kept: dict[tuple[str, bool, str], Chat] = {}

    def get(self, lang: str, staff: bool = False, purpose: str = "") -> Chat:
        chat = self.kept.get((lang, staff, purpose))
        if chat is not None:
            _, resident, session = chat.rows()
            if resident is None or resident.onboarded_at is None or session is None or resident.locale != lang:
                chat = None
        if chat is None:
            chat = Chat(self.app, lang=lang)
            onboard(chat)
            if staff:
                chat.make_staff()
            self.kept[(lang, staff, purpose)] = chat
        return chat


@pytest.fixture(scope="module")
def residents(shared_app) -> Residents:
    return Residents(shared_app)


def chat_for(app, residents: Residents, state_name: str, lang: str = "tr", purpose: str = "") -> Chat:
    if state_name in ONBOARDING_PATHS:
        return Chat(app, lang=lang)          # onboarding states need a resident who has not finished it
    return residents.get(lang, STATES[state_name].staff_only, purpose)


def test_the_registry_has_the_core_states():
    assert {"menu", "onboarding.language", "onboarding.notice", "onboarding.purpose", "consent.ask",
            "language.pick", "mahalle.pick", "privacy", "data.delete_confirm"} <= set(STATE_NAMES)


def languages_for(app, state_name: str) -> tuple[str, ...]:
    """Every language on SQLite; on PostgreSQL one per state, in turn (the texts do not depend on
    the database, the state's behaviour on it does)."""
    if app.db.dialect.name == "sqlite":
        return LANGUAGES
    return (LANGUAGES[STATE_NAMES.index(state_name) % len(LANGUAGES)],)


@pytest.mark.parametrize("state_name", STATE_NAMES)
def test_every_state_reprompts_unusable_input(shared_app, residents, state_name):
    app = shared_app
    for lang in languages_for(app, state_name):
        chat = chat_for(app, residents, state_name, lang)
        prompt = [shape(o) for o in reach_or_skip(chat, state_name)]
        assert chat.resident.locale == lang
        accepts = STATES[state_name].accepts
        tried = 0
        before = chat.where()
        for case in UNUSABLE:
            if case.kind not in (Kind.TEXT, Kind.COMMAND, Kind.CHOICE) and case.kind in accepts:
                continue  # usable here
            if case.label == "5000 characters" and STATES[state_name].long_text:
                continue  # trimmed with a note, never refused whole (a description: test_resident_words)
            fields = {k: (list(v) if isinstance(v, list) else v) for k, v in case.fields.items()}
            replies = chat.send(case.kind, **fields)
            where = f"{state_name} [{lang}] ← {case.label}"
            assert replies, f"{where}: no reply"
            key, kw = case.reason(lang)
            assert replies[0].text == T(lang, key, **kw), f"{where}: {replies[0].text!r}"
            again = [shape(o) for o in replies[1:]]
            assert again, f"{where}: the question is not asked again"
            assert len(replies) <= 4 and len(replies[0].text) < 300, f"{where}: not a short re-prompt"
            assert prompt[-len(again):] == again, f"{where}: the re-prompt differs from the state's prompt"
            after = chat.where()
            assert after[0] == before[0], f"{where}: the state changed to {after[0]}"
            assert after[1] == before[1], f"{where}: the collected data changed"
            tried += 1
        assert tried >= 5
        # and a typed cancel word, in a Turkish spelling per language, leaves the state
        spelling = CANCEL_SPELLINGS[LANGUAGES.index(lang)]
        onboarded = chat.resident.onboarded_at is not None
        replies = chat.text(spelling)
        where = f"{state_name} [{lang}] ← {spelling!r}"
        if not onboarded:  # onboarding goes on where it was (the question asked again)
            assert replies[0].text == T(lang, "cancel.onboarding"), where
            expected = state_name if state_name.startswith("onboarding.") else "onboarding.language"
            assert chat.where()[0] == expected, where
        else:
            expected = "cancel.nothing" if state_name == IDLE else "cancel.done"
            assert replies[0].text == T(lang, expected), where
            assert chat.where() == (IDLE, {}), where
            assert replies[-1].text == T(lang, "menu.title"), where


@pytest.mark.parametrize("state_name", STATE_NAMES)
def test_every_offered_choice_is_handled_without_a_crash(shared_app, residents, state_name):
    """Reached by its path or entered with empty data, no choice a state offers crashes it."""
    app = shared_app
    chat = chat_for(app, residents, state_name, purpose="choices")
    prompt = reach_or_skip(chat, state_name)
    keys = [c.key for out in prompt for c in out.choices]
    saved = chat.session
    for key in keys:
        if chat.where()[0] is None:          # the last choice erased the resident: a new one
            chat = chat_for(app, residents, state_name, purpose="choices")
            reach(chat, state_name)
            saved = chat.session
        chat.set_session(saved.state, saved.data, datetime.now(timezone.utc))
        out = chat.choose(key)                # Chat.send fails on engine.error
        assert out, f"{state_name}: no answer to choice {key}"
        now_in = chat.where()[0]
        assert now_in is None or now_in in STATES


@pytest.mark.parametrize("typed", ["vazgeç", "VAZGEC", "cancel", "CANCEL", "إلغاء", "الغاء"])
def test_cancel_words_of_every_language(make_app, typed):
    app = make_app()
    chat = Chat(app)
    reach(chat, "privacy")
    assert chat.text(typed)[0].text == T("tr", "cancel.done")
    assert chat.where() == (IDLE, {})


@pytest.mark.parametrize("command", ["iptal", "IPTAL", "İPTAL", "İptal", "cancel"])
def test_cancel_command_spellings(make_app, command):
    app = make_app()
    chat = Chat(app)
    reach(chat, "privacy")
    replies = chat.send(Kind.COMMAND, command=command.lower(), text=f"/{command}")
    assert replies[0].text == T("tr", "cancel.done"), command
    assert chat.state == IDLE


# ---------------------------------------------------------------- onboarding
def test_onboarding_all(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    first = start_onboarding(chat)
    assert [c.key for c in first[-1].choices] == ["lang:tr", "lang:en", "lang:ar"]
    assert first[-1].text == "\n".join(T(lang, "onboarding.choose_language") for lang in LANGUAGES)
    notice = chat.choose("lang:tr")
    assert "https://www.buca.bel.tr/kvkk" in notice[-1].text and "2026-11" in notice[-1].text
    assert [out.text for out in notice] == [notice_summary(app, "tr")]
    replies = chat.choose("all")
    assert chat.state == "mahalle.pick" and chat.data.get("onboarding") is True
    assert replies[0].text == onboarding_thanks("tr")
    records = chat.consents()
    assert [(r.purpose, r.granted) for r in records] == [(p, True) for p in CONSENT_PURPOSES]
    before = datetime.now(timezone.utc)
    for r in records:
        assert r.notice_version == app.settings.privacy_notice_version == "2026-11"
        assert r.channel == CHANNEL
        assert r.recorded_at.tzinfo is not None and r.recorded_at.utcoffset() == timedelta(0)
        assert before - timedelta(minutes=1) < r.recorded_at <= before
    resident = chat.resident
    assert resident.onboarded_at is not None and resident.onboarded_at.utcoffset() == timedelta(0)
    chat.text("kozagac")
    assert chat.resident.mahalle == "kozagac" and chat.state == IDLE


def test_onboarding_choose_each_purpose(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app, lang="en")
    answers = [True, False, True, False]
    onboard(chat, answers)
    records = chat.consents()
    assert [(r.purpose, r.granted) for r in records] == list(zip(CONSENT_PURPOSES, answers))
    assert all(r.notice_version == "2026-11" for r in records)
    assert chat.resident.locale == "en" and chat.resident.onboarded_at is not None


def test_onboarding_none(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app, lang="ar")
    start_onboarding(chat)
    chat.choose("lang:ar")
    replies = chat.choose("none")
    assert replies[0].text == T("ar", "onboarding.no_consent")
    assert replies[-1].text == T("ar", "menu.title")
    assert chat.state == IDLE
    assert [(r.purpose, r.granted) for r in chat.consents()] == [(p, False) for p in CONSENT_PURPOSES]
    assert chat.resident.onboarded_at is not None


def test_before_onboarding_any_message_starts_it_and_the_start_payload_is_kept(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    chat.cmd("start", "zz_12")
    assert chat.state == "onboarding.language" and chat.data == {"payload": "zz_12"}
    chat.choose("lang:tr")
    replies = chat.choose("none")
    # no feature handles "zz": the link is reported as no longer valid, then the menu
    assert T("tr", "start.unknown_link") in [o.text for o in replies]
    assert chat.state == IDLE


def test_language_hint_sets_the_first_language(make_app):
    app = make_app()
    chat = Chat(app, lang="ar")
    replies = start_onboarding(chat)
    assert replies[-1].text.splitlines()[0] == T("ar", "onboarding.choose_language")
    assert chat.resident.locale == "ar"


# ---------------------------------------------------------------- Turkish-aware matching
@pytest.mark.parametrize("typed", ["kozagac", "KOZAĞAÇ", "Kozağaç", "kozağac", "KOZAGAC"])
def test_mahalle_typed_without_turkish_letters(make_app, db_url, typed):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat)
    chat.choose("mahalle")
    replies = chat.text(typed)
    assert replies[0].text == T("tr", "mahalle.saved", mahalle="Kozağaç")
    assert chat.resident.mahalle == "kozagac" and chat.state == IDLE


def test_words_of_a_name_find_the_mahalle(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    chat.choose("mahalle")
    replies = chat.text("vali rahmi")
    assert replies[0].text == T("tr", "mahalle.saved", mahalle="Vali Rahmi Bey")
    assert chat.resident.mahalle == "vali_rahmi_bey"


def test_several_matches_ask_which_one_and_unknown_names_reprompt(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    chat.choose("mahalle")
    replies = chat.text("çamlı")
    assert chat.state == "mahalle.pick"
    assert replies[-1].text == T("tr", "mahalle.did_you_mean")
    labels = [c.label for c in replies[-1].choices]
    assert "Çamlıkule" in labels and "Çamlıpınar" in labels
    replies = chat.text("2")
    assert replies[0].text == T("tr", "mahalle.saved", mahalle="Çamlıpınar")
    chat.choose("mahalle")
    replies = chat.text("xyzzy")
    assert replies[0].text == T("tr", "mahalle.not_found") and chat.state == "mahalle.pick"


def test_mahalle_pages(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    first = chat.choose("mahalle")[-1]
    assert "page:next" in [c.key for c in first.choices]
    second = chat.choose("page:next")[-1]
    assert second.choices[0].label == "Cumhuriyet" and "page:prev" in [c.key for c in second.choices]
    chat.text("1")
    assert chat.resident.mahalle == "cumhuriyet"


def test_a_number_answers_a_numbered_choice(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    start_onboarding(chat)
    chat.text("2")                       # 2 · English
    assert chat.resident.locale == "en" and chat.state == "onboarding.notice"
    chat.text("1")                       # 1 · I allow all
    assert all(r.granted for r in chat.consents())
    chat.text("9")                       # "Next" on the mahalle list
    assert chat.state == "mahalle.pick"
    chat.text("99")                      # no such option, no such mahalle
    assert chat.state == "mahalle.pick"


def test_a_typed_option_label_answers(make_app):
    app = make_app()
    chat = Chat(app)
    start_onboarding(chat)
    chat.text("english")
    assert chat.resident.locale == "en"
    chat.text(T("en", "notice.choose").upper())
    assert chat.state == "onboarding.purpose"
    chat.text("yes")
    chat.text("NO")
    assert [r.granted for r in chat.consents()] == [True, False]
    for _ in range(2):
        chat.text("Yes")
    chat.choose("skip")
    chat.text("privacy")                 # part of "🔒 Privacy and my data"
    assert chat.state == "privacy"


# ---------------------------------------------------------------- idle expiry, lost states, duplicates
def test_idle_expiry_ends_the_conversation(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat)
    chat.choose("mahalle")
    chat.set_session(updated_at=datetime.now(timezone.utc) - app.settings.session_expiry - timedelta(minutes=5))
    replies = chat.text("kozagac")
    assert replies[0].text == T("tr", "engine.expired")
    assert replies[-1].text == T("tr", "menu.title")
    assert chat.state == IDLE and chat.data == {} and chat.resident.mahalle is None


def test_within_the_expiry_the_conversation_resumes(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat)
    chat.choose("mahalle")
    chat.set_session(updated_at=datetime.now(timezone.utc) - app.settings.session_expiry + timedelta(minutes=5))
    replies = chat.text("kozagac")
    assert replies[0].text == T("tr", "mahalle.saved", mahalle="Kozağaç")
    assert chat.resident.mahalle == "kozagac"


def test_expiry_setting_is_used(make_app):
    app = make_app(session_expiry="10m")
    chat = Chat(app)
    onboard(chat)
    chat.choose("privacy")
    chat.set_session(updated_at=datetime.now(timezone.utc) - timedelta(minutes=11))
    assert chat.choose("p:reports")[0].text == T("tr", "engine.expired")
    assert all(r.granted for r in chat.consents())


def test_expired_command_still_runs(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    chat.choose("privacy")
    chat.set_session(updated_at=datetime.now(timezone.utc) - timedelta(days=3))
    replies = chat.cmd("dil")
    assert replies[0].text == T("tr", "engine.expired")
    assert chat.state == "language.pick"


def test_unknown_stored_state_resets_politely(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app, lang="en")
    onboard(chat)
    chat.set_session("report.photo_v1", {"category": "road", "_choices": [["x", "y"]]})
    replies = chat.text("hello")
    assert replies[0].text == T("en", "engine.state_gone")
    assert replies[-1].text == T("en", "menu.title")
    assert chat.state == IDLE and chat.data == {}


def test_a_state_removed_by_a_feature(make_app, db_url):
    """A conversation stored in a state of a feature the next version no longer lists."""
    name = f"test.feature_{uuid.uuid4().hex[:6]}"
    router = Router("test")

    @router.state(name)
    def feature_step(ctx):
        ctx.ask("feature prompt")

    @feature_step.on_input
    def on_feature_step(ctx, msg):
        ctx.say("feature got " + msg.text)
        return Stay()

    app = make_app(database_url=db_url, features=FEATURES + (Feature("test", routers=(router,)),))
    chat = Chat(app)
    onboard(chat)
    chat.set_session(name, {"collected": 1})
    assert chat.text("hi")[0].text == "feature got hi"
    assert chat.state == name and chat.data == {"collected": 1}
    without = make_app(database_url=db_url)   # the same database, the feature gone
    chat.app = without
    replies = chat.text("hi")
    assert replies[0].text == T("tr", "engine.state_gone")
    assert chat.state == IDLE and chat.data == {}


def going_nowhere() -> tuple[Router, str]:
    """A feature whose button leads to the state its conversation's data names (a state no router
    declares, as an old session's data could)."""
    name = f"test.gone_{uuid.uuid4().hex[:6]}"
    router = Router("test")

    @router.state(name, choice_only=True)
    def feature_step(ctx):
        ctx.ask("go?", [Choice("go", "go")])

    @feature_step.on_input
    def on_feature_step(ctx, msg):
        return Go(ctx.data["then"])

    return router, name


def test_a_go_to_a_missing_state_lands_in_the_menu(make_app):
    router, name = going_nowhere()
    app = make_app(features=FEATURES + (Feature("test", routers=(router,)),), strict_targets=False)
    chat = Chat(app)
    onboard(chat)
    chat.set_session(name, {"then": "test.never_registered"})
    assert chat.text("x")[-1].text == "go?"
    replies = chat.choose("go")
    assert replies[-1].text == T("tr", "menu.title") and chat.state == IDLE


def test_in_the_tests_a_go_to_a_missing_state_is_an_error(make_app):
    router, name = going_nowhere()
    app = make_app(features=FEATURES + (Feature("test", routers=(router,)),))
    chat = Chat(app)
    onboard(chat)
    chat.set_session(name, {"then": "test.never_registered"})
    assert chat.text("x")[-1].text == "go?"
    with pytest.raises(AssertionError, match="engine.error"):
        chat.choose("go")
    assert chat.state == IDLE


# ---------------------------------------------------------------- a step that fails commits nothing of its own
CRASH = Router("test.crash")


@CRASH.state("test.crash", choice_only=True)
def crash_prompt(ctx):
    ctx.ask("crash?", [Choice("go", "go")])


@crash_prompt.on_input
def on_crash(ctx, msg):
    """Writes through every way a state has (the ORM, the step's connection, the profile), then fails."""
    audit(ctx.db, ctx.actor, "test.crashed", f"resident:{ctx.resident.id}")
    ctx.db.add(ConsentRecord(resident_id=ctx.resident.id, purpose="announcements", granted=False,
                             notice_version="test", channel=ctx.channel))
    ctx.db.flush()
    ctx.conn.execute(update(Resident).where(Resident.id == ctx.resident.id).values(display_name="changed"))
    ctx.update_resident(locale="ar", mahalle="kozagac")
    raise RuntimeError("a bug in a state")


def test_a_step_that_fails_commits_nothing_of_its_own(make_app, db_url, caplog):
    app = make_app(database_url=db_url, features=FEATURES + (Feature("crash", routers=(CRASH,)),))
    chat = Chat(app, lang="en")
    onboard(chat)
    consents = [(r.purpose, r.granted) for r in chat.consents()]
    chat.set_session("test.crash", {"collected": 1})
    assert chat.text("x")[-1].text == "crash?"
    failed = Inbound(channel=CHANNEL, address=chat.address, kind=Kind.CHOICE, choice="go", external_id="crash-1")
    handled = app.engine.handle(failed)
    # the apology in the resident's language (not the Arabic the failed step chose), then the menu
    assert [out.text for _, out in handled.replies] == [T("en", "engine.error"), T("en", "menu.title")]
    assert chat.state == IDLE and chat.data == {}
    resident = chat.resident
    assert (resident.locale, resident.mahalle, resident.display_name) == ("en", None, chat.address)
    assert [(r.purpose, r.granted) for r in chat.consents()] == consents
    with transaction(app.db) as db:
        assert db.exec(select(AuditLog).where(AuditLog.action == "test.crashed")).all() == []
    assert "a bug in a state" in caplog.text
    # the rest of the step committed: the message is known (its replies are in the outbox)
    assert app.engine.handle(failed).duplicate
    with transaction(app.db) as db:
        texts = [row.payload["text"] for row in db.exec(select(OutboxMessage).where(
            OutboxMessage.address == chat.address).order_by(OutboxMessage.id))]
    assert texts[-2:] == [T("en", "engine.error"), T("en", "menu.title")]


def test_the_common_steps_take_no_savepoint(make_app):
    """A prompt, a choice, a profile change: no SAVEPOINT (the profile change goes with the step's
    last statements); a step that writes through the ORM takes one."""
    app = make_app()
    savepoints = []
    event.listen(app.db, "savepoint", lambda conn, name: savepoints.append(name))
    chat = Chat(app)
    onboard(chat)
    savepoints.clear()
    chat.cmd("dil")
    chat.choose("lang:en")
    chat.choose("mahalle")
    chat.text("kozagac")
    assert savepoints == []
    assert (chat.resident.locale, chat.resident.mahalle) == ("en", "kozagac")
    chat.choose("privacy")
    chat.choose("p:announcements")
    assert len(savepoints) == 1 and not chat.consents()[-1].granted


def test_duplicate_external_id_is_ignored(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat)
    chat.send(Kind.CHOICE, choice="privacy", external_id="upd-1")
    assert chat.state == "privacy" and not chat.handled.duplicate
    version = chat.session.version
    with transaction(app.db) as db:
        outbox_count = len(db.exec(select(OutboxMessage)).all())
    replies = chat.send(Kind.CHOICE, choice="p:reports", external_id="upd-1")
    assert replies == [] and chat.handled.duplicate
    assert chat.session.version == version and all(r.granted for r in chat.consents())
    with transaction(app.db) as db:
        assert len(db.exec(select(OutboxMessage)).all()) == outbox_count
    # the same id on another channel is another message
    other = app.engine.handle(Inbound(channel="telegram", address="77", kind=Kind.TEXT, text="merhaba",
                                      external_id="upd-1"))
    assert not other.duplicate and other.replies


# ---------------------------------------------------------------- data rights
def test_export_json_contents(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat, [True, True, False, True], mahalle="kozagac")
    replies = chat.cmd("verilerim")
    summary = replies[0]
    assert summary.document is not None and summary.document.filename == "katilim-verilerim.json"
    assert "Kozağaç" in summary.text and "console" in summary.text
    data = json.loads(summary.document.data)
    resident = data["resident"]
    assert resident["language"] == "tr" and resident["mahalle"] == "kozagac"
    assert resident["name"] == chat.address and resident["id"] == chat.resident.id
    assert datetime.fromisoformat(resident["created_at"]).utcoffset() == timedelta(0)
    assert data["channels"] == [{"channel": CHANNEL, "address": chat.address, "unreachable": False,
                                 "last_message_at": data["channels"][0]["last_message_at"]}]
    assert [(c["purpose"], c["granted"], c["notice_version"], c["channel"]) for c in data["consents"]] == \
        [(p, g, "2026-11", CHANNEL) for p, g in zip(CONSENT_PURPOSES, [True, True, False, True])]
    assert all(datetime.fromisoformat(c["at"]).utcoffset() == timedelta(0) for c in data["consents"])
    assert data["conversation"]["state"] == IDLE
    assert data["municipality"] == "Buca Belediyesi"
    assert datetime.fromisoformat(data["exported_at"]).tzinfo is not None
    assert chat.state == IDLE


def test_export_from_the_privacy_menu_stays_there(make_app):
    app = make_app()
    chat = Chat(app, lang="en")
    onboard(chat)
    chat.choose("privacy")
    replies = chat.choose("export")
    assert replies[0].document is not None and chat.state == "privacy"


def test_delete_my_data(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat, "all", mahalle="kozagac")
    resident_id = chat.resident.id
    replies = chat.cmd("verilerimisil")
    assert replies[-1].text == T("tr", "data.delete_question") and chat.state == "data.delete_confirm"
    replies = chat.choose("yes")
    assert [o.text for o in replies] == [T("tr", "data.deleted")]
    with transaction(app.db) as db:
        assert db.exec(select(ChannelIdentity).where(ChannelIdentity.resident_id == resident_id)).all() == []
        assert db.get(ConversationSession, resident_id) is None
        resident = db.get(Resident, resident_id)
        assert resident.display_name == "" and resident.mahalle is None and resident.phone is None
        assert resident.anonymised_at is not None and resident.anonymised_at.utcoffset() == timedelta(0)
        consents = db.exec(select(ConsentRecord).where(ConsentRecord.resident_id == resident_id)).all()
        assert len(consents) == len(CONSENT_PURPOSES)
        for record in consents:   # the history stays, with nothing that identifies the person
            assert chat.address not in json.dumps(record.model_dump(), default=str)
        audit = db.exec(select(AuditLog).where(AuditLog.action == "resident.erased")).all()
        assert [a.target for a in audit] == [f"resident:{resident_id}"]
    # writing again starts afresh, as a new resident
    chat.text("merhaba")
    assert chat.resident.id != resident_id and chat.state == "onboarding.language"


def test_keep_my_data(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    chat.cmd("deletemydata")
    replies = chat.choose("no")
    assert replies[0].text == T("tr", "data.delete_kept") and chat.state == IDLE
    assert chat.resident.anonymised_at is None


def test_delete_my_data_during_onboarding(make_app, db_url):
    """The notice offers /verilerimisil before onboarding is finished: it must work there too."""
    app = make_app(database_url=db_url)
    chat = Chat(app)
    start_onboarding(chat)
    chat.choose("lang:tr")
    chat.cmd("verilerimisil")
    assert chat.state == "data.delete_confirm"
    replies = chat.choose("yes")
    assert replies[0].text == T("tr", "data.deleted")
    assert chat.rows() == (None, None, None)


def test_mahalle_needs_consent_when_none_was_given(make_app, db_url):
    app = make_app(database_url=db_url)
    chat = Chat(app)
    onboard(chat, "none")
    replies = chat.choose("mahalle")
    assert replies[-1].text == T("tr", "mahalle.needs_consent")
    assert [c.key for c in replies[-1].choices] == ["privacy", "skip"]
    chat.text("kozagac")
    assert chat.resident.mahalle is None and chat.state == IDLE
    chat.choose("mahalle")
    chat.text("1")
    assert chat.state == "privacy"
    chat.choose("p:announcements")
    assert chat.consents()[-1].purpose == "announcements" and chat.consents()[-1].granted
    chat.choose("back")
    chat.choose("mahalle")
    chat.text("kozagac")
    assert chat.resident.mahalle == "kozagac"


def test_privacy_toggles_consent(make_app):
    app = make_app()
    chat = Chat(app, lang="en")
    onboard(chat)
    chat.choose("privacy")
    replies = chat.choose("p:reminders")
    assert replies[0].text == T("en", "privacy.withdrawn", purpose=T("en", "consent.purpose.reminders"))
    replies = chat.choose("p:reminders")
    assert replies[0].text == T("en", "privacy.granted", purpose=T("en", "consent.purpose.reminders"))
    assert [r.granted for r in chat.consents()][-2:] == [False, True]


@pytest.mark.parametrize("lang", ["en", "ar"])
def test_the_link_command_shown_in_the_menu_works_when_typed(make_app, lang):
    """/link is in the English and Arabic command menus and /yardim: typed, it starts linking."""
    app = make_app(twilio_account_sid="AC" + "0" * 32, twilio_auth_token="test",
                   twilio_whatsapp_from="whatsapp:+905550000000")
    chat = Chat(app, lang=lang)
    onboard(chat)
    help_shown = chat.cmd("help")[0].text
    assert f"/link — {T(lang, 'link.command')}" in help_shown.splitlines() and help_shown == help_text(app, lang)
    replies = chat.cmd("link")
    assert replies[-1].text == T(lang, "link.ask_code") and chat.state == "link.start"


def test_change_language(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat)
    chat.cmd("dil")
    replies = chat.choose("lang:ar")
    assert replies[0].text == T("ar", "language.changed") and replies[-1].text == T("ar", "menu.title")
    assert chat.resident.locale == "ar"
    replies = chat.cmd("help")
    assert T("ar", "help.intro", municipality="بلدية بوجا") in replies[0].text.splitlines()
    assert replies[0].text == help_text(app, "ar")


def test_erasure_leaves_no_personal_data_in_the_outbox(make_app):
    app = make_app()
    chat = Chat(app)
    onboard(chat, "all", mahalle="kozagac")
    chat.cmd("verilerim")
    resident_id = chat.resident.id
    chat.cmd("verilerimisil")
    chat.choose("yes")
    with transaction(app.db) as db:
        rows = db.exec(select(OutboxMessage).where(OutboxMessage.resident_id == resident_id)).all()
        kept = [r for r in rows if r.payload.get("text") != T("tr", "data.deleted")]
    assert not [r for r in kept if chat.address in str(r.payload) or r.address == chat.address]
