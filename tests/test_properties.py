"""Property tests of the engine: any sequence of inbound messages, of any kind and content, leaves the
resident in a registered state, is answered message by message in the resident's language, and
never raises (nor falls back to the engine's apology, which means a state crashed)."""
from __future__ import annotations

import re
import uuid
from functools import lru_cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot import i18n_tools
from bot.features import build_registry
from conversations.i18n import LANGUAGES, translator
from conversations.messages import Inbound, Kind, Media
from storage.db import transaction
from storage.models import ConversationSession, Resident
from tests.conftest import record_figure


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    from bot.app import build_app
    from bot.settings import load_settings

    folder = tmp_path_factory.mktemp("properties")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)
    built = build_app(load_settings(database_url=f"sqlite:///{folder / 'katilim.db'}", media_dir=folder / "media",
                                    http_port=0, telegram_bot_token="", _env_file=None))
    built.test_photo = str(folder / "photo.jpg")
    yield built
    built.db.dispose()


# ---------------------------------------------------------------- what "in the resident's language" means
@lru_cache(maxsize=None)
def _texts(lang: str) -> tuple[str, ...]:
    """The message catalog's texts and the municipality catalog's names in a language."""
    from bot.catalog import load_catalog
    from bot.settings import SAMPLE_CATALOG

    catalog = load_catalog(SAMPLE_CATALOG)
    named = [catalog.municipality.name] + [c.name for c in catalog.categories] + \
        [p.name for p in catalog.pools] + [p.description for p in catalog.pools] + [n for _, n in catalog.skills]
    return tuple(translator(lang)._catalog.values()) + tuple(n.values[lang] for n in named if n.values.get(lang))


@lru_cache(maxsize=None)
def signature(lang: str) -> re.Pattern:
    """Literal pieces (between placeholders) of the language's messages found in no other language."""
    others = "\n".join(text for other in LANGUAGES if other != lang for text in _texts(other))
    pieces = set()
    for text in _texts(lang):
        for part in re.split(r"\{[^}]*\}|\n", text):
            part = part.strip()
            if len(part) >= 5 and part not in others:
                pieces.add(part)
    assert len(pieces) > 50, lang
    return re.compile("|".join(re.escape(p) for p in sorted(pieces, key=len, reverse=True)))


@lru_cache(maxsize=1)
def message_keys() -> frozenset[str]:
    return frozenset(i18n_tools.extract())


@lru_cache(maxsize=1)
def error_texts() -> frozenset[str]:
    return frozenset(translator(lang)("engine.error") for lang in LANGUAGES)


# ---------------------------------------------------------------- inbound messages
SPECIAL_TEXTS = [
    "'); DROP TABLE resident;--", "1 OR 1=1", "%s %d {0} {name} {{", "<script>alert(1)</script>",
    "مرحبا، أريد الإبلاغ عن مشكلة", "\u202eevil\u202c", "\u200f\u200e", "🚧🕳️👍🏽", "👨‍👩‍👧",
    "iptal", "İPTAL", "Iptal", "menü", "yardım", "help", "إلغاء", "kozagac", "KOZAĞAÇ", "vali rahmi",
    "evet", "hayır", "yes", "no", "0", "-1", "1.5", "١", "𝟙", "99999999999999999999", "   ", "\n\n\t",
    "/start", "/iptal",
]
PAYLOADS = ["", "ev_1", "ev_", "ev_abc", "ev_99999999999999999999999", "ci_1", "ci_x_y", "_", "__", "x" * 300,
            "ev_-1", "ev_1_2", "🚀", "r_1", "zz"]
STATES = build_registry().states
COMMANDS = sorted(set(build_registry().spellings)) + ["foo", "", "START", "İPTAL", "Yardım", "MENÜ", "x" * 80]
LANG_HINTS = ["", "tr", "en", "ar", "de", "en-US", "AR"]

plain_texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SPECIAL_TEXTS),
    st.integers(-3, 130).map(str),
    st.builds(lambda piece, n: (piece * n)[:10_000], st.text(min_size=1, max_size=4), st.integers(0, 10_000)),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl"]), max_size=30),
)
junk_choices = st.one_of(st.sampled_from(["nope", "page:next", "page:prev", "", "lang:xx", "m:nowhere", "yes", "no",
                                          "skip", "back", "p:nothing", "menu", "1"]),
                         st.text(max_size=30))
KINDS = [Kind.CHOICE] * 8 + [Kind.TEXT] * 4 + [Kind.COMMAND] * 2 + [k for k in Kind if k not in
                                                                     (Kind.CHOICE, Kind.TEXT, Kind.COMMAND)]


def draw_message(data, address: str, hint: str, offered: list[tuple[str, str]], photo: str) -> Inbound:
    kind = data.draw(st.sampled_from(KINDS), label="kind")
    fields: dict = {}
    keys, labels = [k for k, _ in offered], [label for _, label in offered]
    if kind == Kind.TEXT:
        options = [plain_texts] + ([st.sampled_from(labels)] * 2 if labels else [])
        fields["text"] = data.draw(st.one_of(*options), label="text")
    elif kind == Kind.COMMAND:
        name = data.draw(st.one_of(st.sampled_from(COMMANDS), st.text(max_size=20)), label="command")
        payload = data.draw(st.one_of(st.sampled_from(PAYLOADS), st.text(max_size=80)), label="payload")
        fields.update(command=name.lower(), text=f"/{name} {payload}".rstrip())
    elif kind == Kind.CHOICE:
        options = ([st.sampled_from(keys)] * 4 if keys else []) + [junk_choices]
        fields["choice"] = data.draw(st.one_of(*options), label="choice")
    elif kind == Kind.LOCATION:
        fields["latitude"] = data.draw(st.floats(-90, 90), label="lat")
        fields["longitude"] = data.draw(st.floats(-180, 180), label="lon")
    elif kind in (Kind.PHOTO, Kind.VOICE, Kind.DOCUMENT):
        ref = data.draw(st.sampled_from([photo, "/nonexistent/x.jpg", ""]), label="ref")
        size = data.draw(st.one_of(st.none(), st.integers(0, 60_000_000)), label="size")
        fields["media"] = [Media(ref=ref, content_type="image/jpeg" if kind == Kind.PHOTO else "audio/ogg",
                                 size=size, filename=ref.rsplit("/", 1)[-1])]
        if kind == Kind.PHOTO:
            fields["text"] = data.draw(st.one_of(st.just(""), plain_texts), label="caption")
    elif kind == Kind.CONTACT:
        fields["phone"] = data.draw(st.one_of(st.sampled_from(["+905551112233", "05551112233", ""]),
                                              st.text(max_size=20)), label="phone")
    return Inbound(channel="console", address=address, kind=kind, display_name=address, language_hint=hint,
                   **fields)


_TALLY: dict = {"sequences": 0, "messages": 0, "states": set(), "kinds": set(), "languages": set()}


@pytest.fixture(scope="module", autouse=True)
def _tally():
    """One figure for the whole property test: how much it threw at the engine."""
    yield
    if _TALLY["sequences"]:
        record_figure("test_properties", f"hypothesis: {_TALLY['sequences']} residents, {_TALLY['messages']} messages "
                      f"of {len(_TALLY['kinds'])} kinds, {len(_TALLY['states'])} of {len(STATES)} states reached, "
                      f"answers in {', '.join(sorted(_TALLY['languages']))}; no exception, every state valid")


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_any_messages_leave_a_valid_state_answered_in_the_residents_language(app, data):
    address = f"p-{uuid.uuid4().hex[:12]}"
    _TALLY["sequences"] += 1
    hint = data.draw(st.sampled_from(LANG_HINTS), label="language hint")
    count = data.draw(st.integers(1, 15), label="messages")
    offered: list[tuple[str, str]] = []
    # half the residents first finish onboarding (then the messages reach the features' states)
    onboarded = data.draw(st.booleans(), label="onboarded first")
    first = [Inbound(channel="console", address=address, kind=Kind.TEXT, text="merhaba", language_hint=hint),
             Inbound(channel="console", address=address, kind=Kind.CHOICE,
                     choice=f"lang:{data.draw(st.sampled_from(LANGUAGES), label='language')}"),
             Inbound(channel="console", address=address, kind=Kind.CHOICE, choice="all"),
             Inbound(channel="console", address=address, kind=Kind.CHOICE, choice="skip")] if onboarded else []
    for i in range(len(first) + count):
        msg = first[i] if i < len(first) else draw_message(data, address, hint, offered, app.test_photo)
        handled = app.engine.handle(msg)            # never raises
        _TALLY["messages"] += 1
        _TALLY["kinds"].add(msg.kind)
        replies = [out for _, out in handled.replies]
        assert replies, f"no answer to {msg.kind}"
        assert not error_texts() & {out.text for out in replies}, "a state crashed (engine.error)"
        with transaction(app.db) as db:
            resident = db.get(Resident, handled.resident_id)
            session = db.get(ConversationSession, handled.resident_id)
            lang = resident.locale
            if session is not None:
                assert session.state in STATES, f"unregistered state {session.state!r}"
                _TALLY["states"].add(session.state)
        assert lang in LANGUAGES
        _TALLY["languages"].add(lang)
        assert any(signature(lang).search(out.text) for out in replies), \
            f"no reply in {lang}: {[out.text[:80] for out in replies]}"
        for out in replies:
            assert out.text not in message_keys(), f"untranslated key {out.text}"
            assert not {c.label for c in out.choices} & message_keys(), "an untranslated choice label"
        asked = [out for out in replies if out.choices]
        if asked:
            offered = [(c.key, c.label) for c in asked[-1].choices]
