"""Routers and the registry: how a feature declares its conversation, and how the application
puts the features together.

A flow module defines one `router = Router("reports")` and declares on it, as aiogram does:

    @router.state("report.describe", accepts={Kind.TEXT, Kind.VOICE})
    def report_describe(ctx): ...            # the prompt
    @report_describe.on_input
    def on_describe(ctx, msg): ...           # the input handler: Go | Stay | Invalid

    @router.command("report", "bildir", menu={"tr": "bildir", ...}, description=N_("report.command"))
    router.menu_item(10, "report", N_("report.menu"), "cmd:report")
    @router.global_choice("rs")  @router.start_payload("ev")  router.word_command(key, action)
    router.exporter(fn)  router.eraser(fn)  router.merger(fn)
    @router.on_withdrawal("reports")  @router.on_grant("reminders")

Declaring touches only that router object: nothing is registered anywhere at import. The wiring
module (bot/features.py) lists the features in order, and `Registry.build(routers)` merges their
routers: it refuses duplicates (state names, command names and spellings, menu keys, global
choice and start payload prefixes) and checks every state a router's code names as a literal
(`targets_of`), so a misspelt `Go("report.descibe")` stops start-up with one line instead of
sending residents to the menu. The engine reads the registry from its config
(`ctx.config.registry`).
"""
from __future__ import annotations

import ast
import inspect
import sys
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from conversations.i18n import LANGUAGES
from conversations.messages import Inbound, Kind
from conversations.step import IDLE, Invalid, Transition

if TYPE_CHECKING:
    from sqlmodel import Session

    from conversations.step import Ctx, EngineConfig
    from storage.attachments import Erased

TEXT_AND_CHOICE = frozenset({Kind.TEXT, Kind.CHOICE})
COMMAND_PREFIX = "cmd:"  # a menu item whose target is "cmd:NAME" runs that command

Prompt = Callable[["Ctx"], None]
Handler = Callable[["Ctx", Inbound], Transition]
Command = Callable[["Ctx", str], Transition]
Exporter = Callable[["Session", int], dict[str, Any]]
# Erasers, mergers and consent hooks get the engine's config (time zone, settings: reminder offsets).
Eraser = Callable[["Session", int, "EngineConfig"], "Erased | None"]
Merger = Callable[["Session", int, int, "EngineConfig"], None]
ConsentHook = Callable[["Session", int, datetime, "EngineConfig"], Any]


class RegistryError(ValueError):
    """The routers do not fit together (a duplicate, a state named but never declared...)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class State:
    """A declared state: its prompt (`enter`) and its input handler (`handle`)."""

    name: str
    accepts: frozenset[Kind]
    enter: Prompt
    handle: Handler
    choice_only: bool = False      # anything but a choice gets "please choose" before the handler
    needs_onboarding: bool = True
    staff_only: bool = False
    router: str = ""
    number_answer: bool = False    # a typed number is the answer (a capacity), never "the Nth button"
    long_text: bool = False        # a text over MAX_TEXT_LENGTH reaches the handler, which trims it


def _no_input(ctx: "Ctx", msg: Inbound) -> Transition:
    return Invalid("engine.choose")


@dataclass(frozen=True)
class CommandDef:
    name: str                       # the canonical action ("report")
    fn: Command
    spellings: tuple[str, ...]      # what a resident types after "/" ("bildir", "report")
    menu: Mapping[str, str]         # language → the spelling shown in the command menu and /yardim
    description: str | None         # the catalog key describing it there
    router: str = ""
    staff: bool = False             # a staff command: in /yardim and the main menu of staff only


@dataclass(frozen=True)
class MenuItem:
    order: int
    key: str
    label: str                      # catalog key
    target: str                     # a state, or "cmd:NAME"
    router: str = ""
    staff: bool = False             # shown to staff only


class Router:
    """What one feature module declares. Decorators return the function they decorate."""

    def __init__(self, name: str) -> None:
        self.name = name
        caller = sys._getframe(1).f_globals.get("__name__", "")
        self.modules: list[str] = [caller] if caller else []
        self.states: dict[str, State] = {}
        self.commands: list[CommandDef] = []
        self.menu_items: list[MenuItem] = []
        self.global_choices: dict[str, Handler] = {}
        self.start_payloads: dict[str, Command] = {}
        self.word_commands: dict[str, str] = {}
        self.exporters: list[Exporter] = []
        self.erasers: list[Eraser] = []
        self.mergers: list[Merger] = []
        self.withdrawals: dict[str, list[ConsentHook]] = {}
        self.grants: dict[str, list[ConsentHook]] = {}
        self.idle_texts: list[Handler] = []
        self.problems: list[str] = []

    def __repr__(self) -> str:
        return f"Router({self.name!r})"

    def _note(self, fn: Callable) -> None:
        module = getattr(fn, "__module__", None)
        if module and module not in self.modules:
            self.modules.append(module)

    # -- the conversation
    def state(self, name: str, *, accepts: Iterable[Kind] = TEXT_AND_CHOICE, choice_only: bool = False,
              needs_onboarding: bool = True, staff_only: bool = False, number_answer: bool = False,
              long_text: bool = False):
        """Declare a state: decorate its prompt `(ctx) -> None`; attach the input handler
        `(ctx, msg) -> Go | Stay | Invalid` with `@prompt.on_input`. `choice_only`: any other kind
        of input is answered "please choose" without reaching the handler. `number_answer`: the
        state asks for a number, so a typed "1" reaches the handler as text instead of choosing the
        first button. `long_text`: a text longer than the engine's limit is not refused whole but
        given to the handler, which trims it to what it keeps and says so (a report's description)."""

        def deco(enter: Prompt) -> Prompt:
            entry = State(name, frozenset(accepts), enter, _no_input, choice_only, needs_onboarding, staff_only,
                          self.name, number_answer, long_text)
            if name in self.states:
                self.problems.append(f"state {name!r} declared twice in router {self.name!r}")
            self.states[name] = entry
            self._note(enter)

            def on_input(handle: Handler) -> Handler:
                entry.handle = handle
                self._note(handle)
                return handle

            enter.on_input = on_input  # type: ignore[attr-defined]
            return enter

        return deco

    def command(self, name: str, *spellings: str, menu: Mapping[str, str] | None = None,
                description: str | None = None, staff: bool = False):
        """Declare a global command `(ctx, text) -> Transition`: `name` is its canonical action,
        `spellings` what residents type ("/bildir"), `menu` the spelling per language shown in the
        command menu and /yardim (with `description`, a catalog key). A `staff` command is listed
        in the /yardim of staff only (Registry.staff_menu), never in the residents' command menu."""

        def deco(fn: Command) -> Command:
            self.commands.append(CommandDef(name, fn, tuple(dict.fromkeys(spellings)), dict(menu or {}),
                                            description, self.name, staff))
            self._note(fn)
            return fn

        return deco

    def menu_item(self, order: int, key: str, label: str, target: str, *, staff: bool = False) -> None:
        """A main-menu button (sorted by `order`) leading to a state, or to a command ("cmd:NAME");
        `staff`: shown to staff only."""
        self.menu_items.append(MenuItem(order, key, label, target, self.name, staff))

    def global_choice(self, prefix: str):
        """Buttons on proactive messages must work whatever state the resident is in: a choice key
        "PREFIX:..." the current state did not offer goes to this handler `(ctx, msg) ->
        Transition`, which validates the rest of the key itself (it may come from an old message).
        To leave the resident where they were it appends to ctx.replies (never ctx.ask with
        choices, which would replace the state's own) and returns Stay()."""
        return self._keyed(self.global_choices, "global choice prefix", prefix)

    def start_payload(self, prefix: str):
        """A deep link's /start payload "PREFIX_ARG" (`https://t.me/bot?start=ev_12`): `(ctx, arg) -> Transition`."""
        return self._keyed(self.start_payloads, "start payload", prefix)

    def _keyed(self, table: dict[str, Callable], what: str, prefix: str):
        def deco(fn: Callable) -> Callable:
            if prefix in table:
                self.problems.append(f"{what} {prefix!r} declared twice in router {self.name!r}")
            table[prefix] = fn
            self._note(fn)
            return fn

        return deco

    def idle_text(self, fn: Handler) -> Handler:
        """What free text typed at the menu (nothing in progress) may mean to this feature, e.g.
        the answer to a question staff asked: `(ctx, msg) -> Transition | None` (None: not for
        it). The menu asks each feature's handler in order before saying "please choose"."""
        self.idle_texts.append(fn)
        self._note(fn)
        return fn

    def word_command(self, key: str, action: str) -> None:
        """Typed words that act like a command in any state: the catalog key's comma-separated
        words, in every language ("words.stop": "dur, stop") → the command `action`."""
        self.word_commands[key] = action

    # -- the resident's data rights
    def exporter(self, fn: Exporter) -> Exporter:
        """`(db, resident_id) -> dict`: this feature's part of /verilerim's export."""
        self.exporters.append(fn)
        return fn

    def eraser(self, fn: Eraser) -> Eraser:
        """`(db, resident_id, config)`: deletes this feature's personal data at /verilerimisil, in
        the caller's transaction; may return a storage.attachments.Erased (files to delete after
        the commit, words others' messages may quote)."""
        self.erasers.append(fn)
        return fn

    def merger(self, fn: Merger) -> Merger:
        """`(db, gone_id, keep_id, config)`: when two residents become one (/bagla), what the generic
        move of resident_id rows (storage/linking.py) cannot do alone; runs before that move."""
        self.mergers.append(fn)
        return fn

    def on_withdrawal(self, purpose: str):
        """`(db, resident_id, now, config)`: what withdrawing the consent for `purpose` stops, now."""
        return self._consent_hook(self.withdrawals, purpose)

    def on_grant(self, purpose: str):
        """`(db, resident_id, now, config)`: what comes back on its own when the consent for
        `purpose` is given again after onboarding."""
        return self._consent_hook(self.grants, purpose)

    @staticmethod
    def _consent_hook(hooks: dict[str, list[ConsentHook]], purpose: str):
        def deco(fn: ConsentHook) -> ConsentHook:
            hooks.setdefault(purpose, []).append(fn)
            return fn

        return deco


def _frozen(mapping: dict) -> Mapping:
    return MappingProxyType(mapping)


@dataclass(frozen=True)
class Registry:
    """Everything the routers declared, merged in their order, checked, and read-only."""

    routers: tuple[Router, ...]
    states: Mapping[str, State]
    commands: Mapping[str, CommandDef]          # canonical name → command
    spellings: Mapping[str, str]                # typed command name → canonical name
    command_menu: Mapping[str, tuple[str, ...]]  # language → spellings shown, in order
    word_commands: Mapping[str, str]            # catalog key → canonical name
    menu_items: tuple[MenuItem, ...]
    global_choices: Mapping[str, Handler]
    start_payloads: Mapping[str, Command]
    exporters: tuple[Exporter, ...]
    erasers: tuple[Eraser, ...]
    mergers: tuple[Merger, ...]
    withdrawals: Mapping[str, tuple[ConsentHook, ...]]
    grants: Mapping[str, tuple[ConsentHook, ...]]
    idle_texts: tuple[Handler, ...] = ()
    staff_menu: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # language → staff commands shown

    @classmethod
    def build(cls, routers: Iterable[Router]) -> "Registry":
        """Merge the routers in this order; RegistryError (naming every problem) when two declare
        the same thing, a name the engine needs is missing, or a state named in their code (or a
        menu target) is not declared by any of them."""
        routers = tuple(routers)
        problems: list[str] = []
        states: dict[str, State] = {}
        commands: dict[str, CommandDef] = {}
        spellings: dict[str, str] = {}
        menu: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
        staff_menu: dict[str, list[str]] = {lang: [] for lang in LANGUAGES}
        words: dict[str, str] = {}
        items: dict[str, MenuItem] = {}
        global_choices: dict[str, Handler] = {}
        payloads: dict[str, Command] = {}
        withdrawals: dict[str, list[ConsentHook]] = {}
        grants: dict[str, list[ConsentHook]] = {}
        owner: dict[tuple[str, str], str] = {}

        def claim(kind: str, key: str, by: str) -> bool:
            if (kind, key) in owner:
                problems.append(f"{kind} {key!r} is declared by {owner[kind, key]} and by {by}")
                return False
            owner[kind, key] = by
            return True

        for router in routers:
            problems += router.problems
            by = f"router {router.name!r}"
            for name, entry in router.states.items():
                if claim("state", name, by):
                    states[name] = entry
            for cmd in router.commands:
                if not claim("command", cmd.name, by):
                    continue
                commands[cmd.name] = cmd
                command_by = f"command {cmd.name!r} of {by}"
                for spelling in cmd.spellings:
                    if claim("command spelling", spelling, command_by):
                        spellings[spelling] = cmd.name
                for lang, shown in cmd.menu.items():
                    if lang not in menu:
                        problems.append(f"command {cmd.name!r} (router {router.name!r}): no language {lang!r}")
                    elif shown not in cmd.spellings:
                        problems.append(f"command {cmd.name!r} (router {router.name!r}) shows {shown!r} in the "
                                        f"{lang} menu, which is not one of its spellings")
                    else:
                        (staff_menu if cmd.staff else menu)[lang].append(shown)
            for item in router.menu_items:
                if claim("menu item", item.key, by):
                    items[item.key] = item
            for prefix, fn in router.global_choices.items():
                if claim("global choice prefix", prefix, by):
                    global_choices[prefix] = fn
            for prefix, fn in router.start_payloads.items():
                if claim("start payload", prefix, by):
                    payloads[prefix] = fn
            for key, action in router.word_commands.items():
                if claim("word command", key, by):
                    words[key] = action
            for purpose, hooks in router.withdrawals.items():
                withdrawals.setdefault(purpose, []).extend(hooks)
            for purpose, hooks in router.grants.items():
                grants.setdefault(purpose, []).extend(hooks)

        if IDLE not in states:
            problems.append(f"no router declares the menu state {IDLE!r}")
        if "start" not in commands:
            problems.append("no router declares the command 'start'")
        for key, action in words.items():
            if action not in commands:
                problems.append(f"word command {key!r} runs {action!r}, which no router declares as a command")
        for item in items.values():
            target = item.target
            if target.startswith(COMMAND_PREFIX):
                if target[len(COMMAND_PREFIX):] not in commands:
                    problems.append(f"menu item {item.key!r} (router {item.router!r}) runs an unknown command "
                                    f"{target[len(COMMAND_PREFIX):]!r}")
            elif target not in states:
                problems.append(f"menu item {item.key!r} (router {item.router!r}) leads to an unknown state {target!r}")
        modules = tuple(dict.fromkeys(m for router in routers for m in router.modules))
        for target in targets_of(modules):
            if target.state not in states:
                problems.append(f"{target.where}: {target.how} an unknown state {target.state!r}")
        if problems:
            raise RegistryError(problems)
        return cls(
            routers=routers, states=_frozen(states), commands=_frozen(commands), spellings=_frozen(spellings),
            command_menu=_frozen({lang: tuple(names) for lang, names in menu.items()}), word_commands=_frozen(words),
            staff_menu=_frozen({lang: tuple(names) for lang, names in staff_menu.items()}),
            menu_items=tuple(sorted(items.values(), key=lambda i: (i.order, i.key))),
            global_choices=_frozen(global_choices), start_payloads=_frozen(payloads),
            exporters=tuple(e for r in routers for e in r.exporters),
            erasers=tuple(e for r in routers for e in r.erasers), mergers=tuple(m for r in routers for m in r.mergers),
            withdrawals=_frozen({p: tuple(h) for p, h in withdrawals.items()}),
            grants=_frozen({p: tuple(h) for p, h in grants.items()}),
            idle_texts=tuple(h for r in routers for h in r.idle_texts))

    def menu_item(self, key: str) -> MenuItem | None:
        return next((item for item in self.menu_items if item.key == key), None)

    def canonical(self, spelling: str) -> str:
        """The command a typed name means (itself when it is no spelling)."""
        return self.spellings.get(spelling, spelling)

    def description(self, spelling: str) -> str | None:
        """The catalog key describing the command a menu spelling names."""
        cmd = self.commands.get(self.canonical(spelling))
        return cmd.description if cmd is not None else None


# ---------------------------------------------------------------- state names in the code
@dataclass(frozen=True)
class Target:
    state: str
    where: str    # "conversations/reports.py:142"
    how: str      # "Go to", "require_consent goes on to"...


# The calls that take a state name, and where: (position, keyword). `Go(state, ...)`,
# `enter(ctx, name)`; functions of the scanned modules that pass one of their parameters on to
# these (require_consent's next_state, a flow's `_after(ctx, next_state)`) are found by the scan.
STATE_ARGUMENTS: dict[str, tuple[int, str]] = {"Go": (0, "state"), "enter": (1, "name")}
# Keys of ctx.data under which a flow stores the state to go on to later (consent.ask's "next").
RESUME_KEYS = frozenset({"next", "resume_state", "pin_next"})


def targets_of(module_names: tuple[str, ...]) -> list[Target]:
    """Every literal state name the code of these modules passes where a state is meant."""
    return list(_targets(module_names))


@lru_cache(maxsize=32)
def _targets(module_names: tuple[str, ...]) -> tuple[Target, ...]:
    modules = [sys.modules[name] for name in module_names if name in sys.modules]
    scans = [scan for scan in (_Scan.of(module) for module in modules) if scan is not None]
    carriers = dict(STATE_ARGUMENTS)
    changed = True
    while changed:  # a function passing its parameter on to a carrier carries a state name too
        changed = False
        for scan in scans:
            for fn, calls in scan.calls_in.items():
                if fn.name in carriers:
                    continue
                params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
                for call in calls:
                    spot = carriers.get(_callee(call))
                    arg = _argument(call, spot) if spot else None
                    if isinstance(arg, ast.Name) and arg.id in params:
                        carriers[fn.name] = (params.index(arg.id), arg.id)
                        changed = True
                        break
    found: list[Target] = []
    for scan in scans:
        for call in scan.calls:
            name = _callee(call)
            spot = carriers.get(name)
            arg = _argument(call, spot) if spot else None
            if arg is None:
                continue
            how = "Go to" if name == "Go" else f"{name}(...) leads to"
            found += [Target(value, f"{scan.where}:{call.lineno}", how) for value in scan.strings(arg, call)]
        for node in scan.dicts:
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value in RESUME_KEYS:
                    found += [Target(name, f"{scan.where}:{node.lineno}", f"{key.value!r} names")
                              for name in scan.strings(value, node)]
    return tuple(found)


class _Scan:
    """One module's source, walked once: its calls, dict literals, and per function the calls
    it makes, the names it assigns and what it returns."""

    def __init__(self, module: ModuleType, tree: ast.Module) -> None:
        self.module = module
        self.where = _where(module)
        self.calls: list[ast.Call] = []
        self.dicts: list[ast.Dict] = []
        self.calls_in: dict[ast.AST, list[ast.Call]] = {}            # function → calls anywhere inside it
        self.assigned: dict[tuple[ast.AST, str], list[ast.expr]] = {}  # (function, name) → values
        self.returns: dict[str, list[ast.expr]] = {}                   # function name → returned values
        self.scope: dict[ast.AST, ast.AST | None] = {}                 # node → innermost enclosing function
        self._walk(tree, [])

    @classmethod
    def of(cls, module: ModuleType) -> "_Scan | None":
        try:
            return cls(module, ast.parse(inspect.getsource(module)))
        except (OSError, TypeError):  # no source (a module built in memory): nothing to check
            return None

    def _walk(self, node: ast.AST, functions: list[ast.AST]) -> None:
        for child in ast.iter_child_nodes(node):
            self.scope[child] = functions[-1] if functions else None
            if isinstance(child, ast.Call):
                self.calls.append(child)
                for fn in functions:
                    self.calls_in[fn].append(child)
            elif isinstance(child, ast.Dict):
                self.dicts.append(child)
            elif isinstance(child, ast.Assign) and len(child.targets) == 1 and isinstance(child.targets[0], ast.Name):
                for fn in functions:
                    self.assigned.setdefault((fn, child.targets[0].id), []).append(child.value)
            elif isinstance(child, ast.Return) and child.value is not None and functions:
                self.returns.setdefault(functions[-1].name, []).append(child.value)
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.calls_in[child] = []
                self._walk(child, functions + [child])
            else:
                self._walk(child, functions)

    def strings(self, expr: ast.expr, at: ast.AST, depth: int = 0) -> list[str]:
        """The string values an expression can have that the code spells out: a literal, a module
        constant (IDLE), either branch of `a if c else b` or `a or b`, a default of `.get(key,
        default)` (all values of a literal dict's `.get`), what a function of the module returns,
        and what a local variable is assigned. Anything else (ctx.data's values) is checked when
        entered."""
        if depth > 4:
            return []

        def more(e: ast.expr) -> list[str]:
            return self.strings(e, at, depth + 1)

        if isinstance(expr, ast.Constant):
            return [expr.value] if isinstance(expr.value, str) else []
        if isinstance(expr, ast.IfExp):
            return more(expr.body) + more(expr.orelse)
        if isinstance(expr, ast.BoolOp):
            return [s for value in expr.values for s in more(value)]
        if isinstance(expr, ast.Name):
            assigned = self.assigned.get((self.scope.get(at), expr.id))
            if assigned:
                return [s for value in assigned for s in more(value)]
            value = getattr(self.module, expr.id, None)
            return [value] if isinstance(value, str) else []
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Attribute) and func.attr == "get":
                found = [s for default in expr.args[1:2] for s in more(default)]
                if isinstance(func.value, ast.Dict):
                    found += [s for value in func.value.values for s in more(value)]
                return found
            if isinstance(func, ast.Name) and func.id in self.returns:
                return [s for value in self.returns[func.id] for s in more(value)]
        return []


def _where(module: ModuleType) -> str:
    path = Path(getattr(module, "__file__", "") or module.__name__)
    root = Path(__file__).resolve().parent.parent
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path)


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def _argument(call: ast.Call, spot: tuple[int, str]) -> ast.expr | None:
    position, keyword = spot
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    if position < len(call.args) and not any(isinstance(a, ast.Starred) for a in call.args[:position + 1]):
        return call.args[position]
    return None
