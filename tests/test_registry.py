"""Features are routers listed in one wiring module (bot/features.py): the real registry builds,
routers that do not fit together stop the application with one line naming what and where, no
module keeps a registry of its own, and two applications of different features are different."""
from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path
from types import FunctionType

import pytest

from bot.features import CHANNELS, FEATURES, Feature, build_registry
from conversations.messages import Choice
from conversations.registry import Registry, RegistryError, Router
from conversations.step import Go, Stay
from storage.models import CONSENT_PURPOSES
from tests import conftest
from tests.support.chat import Chat
from tests.test_engine import T

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "conversations", "handlers", "storage")
# The module-level names the registries had before they were routers: none may come back.
OLD_REGISTRIES = ("STATES", "COMMANDS", "COMMAND_ALIASES", "COMMAND_MENU", "COMMAND_TEXTS", "WORD_COMMANDS",
                  "MENU_ITEMS", "GLOBAL_CHOICES", "START_PAYLOADS", "EXPORTERS", "ERASERS", "MERGERS", "JOBS",
                  "HTTP_HOOKS", "CHANNEL_HOOKS", "CLI_MODULES", "WITHDRAWALS", "GRANTS", "CONFIG", "REFERENCES")


def broken_line(text: str) -> int:
    source = (ROOT / "tests" / "broken_feature.py").read_text(encoding="utf-8").splitlines()
    return next(i for i, line in enumerate(source, 1) if text in line)


def small_router(name: str, state: str) -> Router:
    router = Router(name)

    @router.state(state)
    def prompt(ctx):
        ctx.ask(state, [Choice("ok", "ok")])

    @prompt.on_input
    def on_prompt(ctx, msg):
        return Stay()

    return router


# ---------------------------------------------------------------- the real registry
def test_the_registry_of_bot_features_builds():
    registry = build_registry()
    assert len(registry.states) > 70
    assert [r.name for r in registry.routers] == ["core", "linking", "reports", "staff_reports", "broadcasts",
                                                  "participation", "reminders", "events", "volunteering", "panel_link"]
    # what the engine needs, and what withdrawing each consent stops
    assert "menu" in registry.states and "start" in registry.commands
    assert set(registry.withdrawals) == set(CONSENT_PURPOSES)
    assert set(registry.grants) == {"reminders"}
    # every name shown in the command menu works when typed
    for lang, names in registry.command_menu.items():
        assert names and all(registry.spellings[name] for name in names), lang


# ---------------------------------------------------------------- routers that do not fit
def test_a_go_to_an_unknown_state_fails_the_build_naming_the_state_and_where():
    from tests import broken_feature

    with pytest.raises(RegistryError) as raised:
        build_registry(FEATURES + (Feature("broken", routers=(broken_feature.router,)),))
    assert raised.value.problems == [
        f"tests/broken_feature.py:{broken_line('Go(')}: Go to an unknown state 'report.descibe'"]


def test_a_literal_passed_on_to_a_state_is_checked_too(tmp_path, monkeypatch):
    """require_consent(ctx, purpose, "state") goes on to that state: a misspelt one is found."""
    source = (ROOT / "tests" / "broken_feature.py").read_text(encoding="utf-8")
    (tmp_path / "misspelt_feature.py").write_text(source.replace('"broken.start")', '"broken.strat")'),
                                                  encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module("misspelt_feature")
        with pytest.raises(RegistryError) as raised:
            build_registry(FEATURES + (Feature("misspelt", routers=(module.router,)),))
    finally:
        sys.modules.pop("misspelt_feature", None)
    where = tmp_path / "misspelt_feature.py"
    assert raised.value.problems == [
        f"{where}:{broken_line('return require_consent')}: require_consent(...) leads to an unknown state 'broken.strat'",
        f"{where}:{broken_line('Go(')}: Go to an unknown state 'report.descibe'"]


@pytest.mark.parametrize("what", ["state", "command", "spelling", "menu key", "global choice", "start payload"])
def test_two_routers_declaring_the_same_thing_fail_the_build(what):
    first, second = small_router("first", "first.one"), small_router("second", "second.one")
    for router in (first, second):
        if what == "state":
            router.state("shared.state")(lambda ctx: None)
        elif what == "command":
            router.command("shared", router.name)(lambda ctx, text: Go("menu"))
        elif what == "spelling":
            router.command(router.name, "ortak")(lambda ctx, text: Go("menu"))
        elif what == "menu key":
            router.menu_item(50, "shared", "menu.help", "menu")
        elif what == "global choice":
            router.global_choice("zz")(lambda ctx, msg: Stay())
        else:
            router.start_payload("zz")(lambda ctx, arg: Go("menu"))
    named = {"state": "state 'shared.state'", "command": "command 'shared'", "spelling": "command spelling 'ortak'",
             "menu key": "menu item 'shared'", "global choice": "global choice prefix 'zz'",
             "start payload": "start payload 'zz'"}[what]
    by = ("command 'first' of router 'first' and by command 'second' of router 'second'" if what == "spelling"
          else "router 'first' and by router 'second'")
    core = FEATURES[0].routers
    with pytest.raises(RegistryError) as raised:
        Registry.build([*core, first, second])
    assert raised.value.problems == [f"{named} is declared by {by}"]


def test_one_router_declaring_a_command_or_a_menu_key_twice_fails_the_build():
    router = small_router("twice", "twice.one")
    for name in ("one", "two"):
        router.command(name, "ikisi")(lambda ctx, text: Go("menu"))
        router.menu_item(50, "same", "menu.help", "menu")
    with pytest.raises(RegistryError) as raised:
        Registry.build([*FEATURES[0].routers, router])
    assert raised.value.problems == [
        "command spelling 'ikisi' is declared by command 'one' of router 'twice' and by command 'two' of router 'twice'",
        "menu item 'same' is declared by router 'twice' and by router 'twice'"]


def test_a_menu_item_to_an_unknown_state_or_command_fails_the_build():
    router = Router("menu")
    router.menu_item(50, "nowhere", "menu.help", "no.such_state")
    router.menu_item(51, "nothing", "menu.help", "cmd:nosuch")
    with pytest.raises(RegistryError) as raised:
        Registry.build([*FEATURES[0].routers, router])
    assert raised.value.problems == ["menu item 'nowhere' (router 'menu') leads to an unknown state 'no.such_state'",
                                     "menu item 'nothing' (router 'menu') runs an unknown command 'nosuch'"]


def test_a_registry_without_the_menu_fails_the_build():
    with pytest.raises(RegistryError) as raised:
        Registry.build([small_router("alone", "alone.one")])
    problems = raised.value.problems
    assert problems[:2] == ["no router declares the menu state 'menu'", "no router declares the command 'start'"]
    # and this module's routers go to the menu, which this registry has not got
    assert problems[2:] and all(p.startswith("tests/test_registry.py:") and p.endswith("Go to an unknown state 'menu'")
                                for p in problems[2:])


def test_katilim_run_with_a_broken_target_stops_with_one_line(tmp_path):
    """`katilim run` (bot.cli.main) of features that include the broken one: exit 2, one line."""
    script = ("import sys\n"
              "from bot.cli import main\n"
              "from bot.features import FEATURES, Feature\n"
              "from tests.broken_feature import router\n"
              "sys.exit(main(['run'], features=FEATURES + (Feature('broken', routers=(router,)),)))\n")
    env = conftest.test_env(DATABASE_URL=f"sqlite:///{tmp_path / 'katilim.db'}", MEDIA_DIR=str(tmp_path / "media"),
                   HTTP_PORT="0", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"katilim: the features do not fit together: tests/broken_feature.py:{broken_line('Go(')}: "
        f"Go to an unknown state 'report.descibe'"]
    assert not (tmp_path / "katilim.db").exists()  # stopped before it opened the database


# ---------------------------------------------------------------- no registry outside the routers
def every_module():
    for package in PACKAGES:
        yield importlib.import_module(package)
        for info in pkgutil.walk_packages([str(ROOT / package)], prefix=f"{package}."):
            if ".migrations" not in info.name:
                yield importlib.import_module(info.name)


def test_importing_every_module_fills_no_registry():
    """What a router declares is held by the router alone: after importing every module, no
    module-level container holds a declared function or state, and no old registry name is left."""
    modules = list(every_module())
    routers = {id(value): value for module in modules for value in vars(module).values() if isinstance(value, Router)}
    declared: set[int] = set()
    for router in routers.values():
        for entry in router.states.values():
            declared |= {id(entry), id(entry.enter), id(entry.handle)}
        declared |= {id(c.fn) for c in router.commands}
        declared |= {id(f) for f in (*router.global_choices.values(), *router.start_payloads.values(),
                                      *router.exporters, *router.erasers, *router.mergers)}
        declared |= {id(f) for hooks in (*router.withdrawals.values(), *router.grants.values()) for f in hooks}
    assert len(routers) == len(build_registry().routers) and declared
    held = []
    for module in modules:
        for name, value in vars(module).items():
            if name in OLD_REGISTRIES and not isinstance(value, FunctionType):
                held.append(f"{module.__name__}.{name}")
            if isinstance(value, dict):
                items = [*value.keys(), *value.values()]
            elif isinstance(value, (list, tuple, set, frozenset)):
                items = list(value)
            else:
                continue
            if any(id(item) in declared for item in items):
                held.append(f"{module.__name__}.{name}")
    assert held == []
    assert FEATURES and CHANNELS  # the one list, in bot/features.py


def test_two_apps_with_different_features_have_different_states(make_app):
    everything = make_app()
    core_only = make_app(features=FEATURES[:1])
    assert "report.category" in everything.registry.states
    assert "report.category" not in core_only.registry.states
    assert set(core_only.registry.states) < set(everything.registry.states)
    # the same database, the same resident: /bildir is a command of one application only
    chat = Chat(core_only, "both", lang="en")
    chat.onboard(first="merhaba")
    replies = chat.cmd("report")
    assert replies[0].text == T("en", "engine.unknown_command", command="/report")
    assert [c.key for c in chat.cmd("menu")[-1].choices] == ["mahalle", "privacy", "language", "help"]
    chat.app = everything
    chat.cmd("report")
    assert chat.state == "report.category"
