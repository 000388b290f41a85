"""The real `katilim` command in a subprocess: the terminal chat, `run --or-chat` without a channel,
and the staff commands."""
from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

from conversations.i18n import translator
from tests import conftest

tr, en = translator("tr"), translator("en")


def katilim(tmp_path: Path, *args: str, stdin: str = "", db: Path | None = None,
            lang: str = "tr_TR.UTF-8", **env: str) -> subprocess.CompletedProcess:
    env = conftest.test_env(DATABASE_URL=f"sqlite:///{db or tmp_path / 'katilim.db'}",
                            MEDIA_DIR=str(tmp_path / "media"), LANG=lang, LC_ALL="", LC_MESSAGES="",
                            HTTP_PORT="0", **env)
    return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


def in_order(output: str, *texts: str) -> None:
    """Every text appears in the output, in this order."""
    at = 0
    for text in texts:
        found = output.find(text, at)
        assert found >= 0, f"{text!r} not found after position {at} in:\n{output[at:at + 1500]}"
        at = found + len(text)


def test_chat_session(tmp_path):
    lines = [                   # the chat opens with the language question (no bare prompt)
        "1",                    # 1 · Türkçe
        "tek tek",              # typed: "Tek tek seçeyim"
        "evet",                 # reports: yes (typed)
        "2",                    # volunteering: no (numbered)
        "1",                    # reminders: yes
        "Evet",                 # announcements: yes
        "kozagac",              # the mahalle, typed without Turkish letters
        "/verilerim",
        "/dil",
        "/iptal",
        "/dil",
        "2",                    # English
        "/cikartma",
        "/konum 38.39 27.17",
    ]
    done = katilim(tmp_path, "chat", "--as", "ayse", stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    export = tmp_path / "media" / "console" / "1" / "katilim-verilerim.json"   # the resident's own folder
    written = export.read_text(encoding="utf-8")
    assert not (tmp_path / "katilim-verilerim.json").exists()          # never in the current directory
    # the same resident comes back and deletes their data (the export written above goes too)
    erased = katilim(tmp_path, "chat", "--as", "ayse", stdin="/verilerimisil\n1\n")
    assert erased.returncode == 0, erased.stderr
    out = done.stdout + erased.stdout
    assert "Traceback" not in done.stderr + erased.stderr and tr("engine.error") not in out
    assert tr("console.intro", name="ayse") in done.stderr
    in_order(out,
             tr("onboarding.choose_language"), "1 · ✓ Türkçe", "2 · English",
             tr("notice.accept_all"),
             tr("consent.question", purpose=tr("consent.purpose.reports"), why=tr("consent.why.reports")),
             tr("consent.question", purpose=tr("consent.purpose.volunteering"), why=tr("consent.why.volunteering")),
             tr("consent.question", purpose=tr("consent.purpose.reminders"), why=tr("consent.why.reminders")),
             tr("consent.question", purpose=tr("consent.purpose.announcements"),
                why=tr("consent.why.announcements")),
             tr("mahalle.prompt"),
             tr("mahalle.saved", mahalle="Kozağaç"), tr("menu.title"),
             "Mahalle: Kozağaç", "📎 ", tr("menu.title"),
             tr("language.prompt"), tr("cancel.done"), tr("menu.title"),
             tr("language.prompt"), en("language.changed"), en("menu.title"),
             en("engine.wrong_kind", what=en("kind.sticker")), en("menu.title"),
             en("engine.wrong_kind", what=en("kind.location")), en("menu.title"),
             en("data.delete_question"), en("data.deleted"))
    assert out.count("📎 ") == 1
    exported = json.loads(written)
    assert f"📎 {export}" in out
    assert exported["resident"]["name"] == "ayse" and exported["resident"]["mahalle"] == "kozagac"
    assert exported["resident"]["language"] == "tr"
    assert exported["channels"][0]["channel"] == "console" and exported["channels"][0]["address"] == "ayse"
    assert [(c["purpose"], c["granted"]) for c in exported["consents"]] == [
        ("reports", True), ("volunteering", False), ("reminders", True), ("announcements", True)]
    assert exported["municipality"] == "Buca Belediyesi"
    assert not export.exists()   # erasure removed the export it wrote


def test_chat_after_deletion_starts_afresh_and_quits(tmp_path):
    first = katilim(tmp_path, "chat", "--as", "ali", stdin="/verilerimisil\n1\n")
    assert first.returncode == 0, first.stderr
    assert tr("data.deleted") in first.stdout
    again = katilim(tmp_path, "chat", "--as", "ali", stdin="/cikis\nthis line is never read\n")
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(tr("onboarding.choose_language")) == 1   # the greeting, before any line


def test_run_without_a_channel_opens_the_chat(tmp_path):
    done = katilim(tmp_path, "run", "--or-chat", stdin="")
    assert done.returncode == 0, done.stderr
    assert tr("console.no_channel_chat", url="http://127.0.0.1:0/panel") in done.stderr
    assert "katilim chat" not in done.stderr + done.stdout     # never told to open what they are in
    assert tr("onboarding.choose_language") in done.stdout


def test_the_first_messages_speak_the_readers_language(tmp_path):
    """No channel configured and the chat's greeting: in the system locale when it is one of ours,
    else in English (the README's); the bot's own first question stays in every language."""
    for lang, t in (("C.UTF-8", en), ("en_GB.UTF-8", en), ("de_DE.UTF-8", en), ("tr_TR.UTF-8", tr),
                    ("ar_EG.UTF-8", translator("ar"))):
        done = katilim(tmp_path, "run", "--or-chat", stdin="", lang=lang)
        assert done.returncode == 0, done.stderr
        login = getpass.getuser()
        assert done.stderr.splitlines()[:2] == [t("console.no_channel_chat", url="http://127.0.0.1:0/panel"),
                                                t("console.intro", name=login)], (lang, done.stderr)


def test_staff_commands(tmp_path):
    added = katilim(tmp_path, "staff", "add", "--telegram", "42", "--role", "admin")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == ("staff 1 saved: name=- telegram=42 whatsapp=- console=- role=admin "
                                    "departments=-")
    listed = katilim(tmp_path, "staff", "list")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.strip().splitlines()[1:]]
    assert rows == [["1", "admin", "yes", "42", "-", "-", "-"]]
    removed = katilim(tmp_path, "staff", "remove", "1")
    assert removed.returncode == 0 and removed.stdout.strip() == "staff 1 removed", removed.stderr
    listed = katilim(tmp_path, "staff", "list")
    assert listed.stdout.strip().splitlines()[1:] == []
    missing = katilim(tmp_path, "staff", "remove", "1")
    assert missing.returncode == 1 and "no staff member 1" in missing.stderr


def test_staff_add_needs_an_identity(tmp_path):
    done = katilim(tmp_path, "staff", "add", "--role", "admin")
    assert done.returncode == 2 and "--telegram" in done.stderr


def test_staff_add_console_keeps_the_name(tmp_path):
    """README's synopsis: `katilim staff add --console NAME`; the name given once stays when the
    member is changed later, and a member added without one is named after the terminal name."""
    first = katilim(tmp_path, "staff", "add", "--console", "ayse", "--name", "Ayşe Yılmaz")
    assert first.returncode == 0, first.stderr
    again = katilim(tmp_path, "staff", "add", "--console", "ayse", "--role", "admin")
    assert again.stdout.strip() == ("staff 1 saved: name=Ayşe Yılmaz telegram=- whatsapp=- console=ayse role=admin "
                                    "departments=-"), again.stderr
    plain = katilim(tmp_path, "staff", "add", "--console", "mehmet")
    assert plain.stdout.strip() == ("staff 2 saved: name=mehmet telegram=- whatsapp=- console=mehmet role=staff "
                                    "departments=-"), plain.stderr
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    assert "katilim staff add (--telegram ID | --whatsapp +90... | --console NAME)" in readme
