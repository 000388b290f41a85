"""A feature with a misspelt state name, for tests/test_registry.py: listing it must stop the
application from building (Registry.build names the state and the line)."""
from conversations.core import require_consent
from conversations.messages import Choice
from conversations.registry import Router
from conversations.step import Go

router = Router("broken")


@router.command("broken", "broken")
def cmd_broken(ctx, text):
    return require_consent(ctx, "reports", "broken.start")


@router.state("broken.start", choice_only=True)
def broken_start(ctx):
    ctx.ask("?", [Choice("go", "go")])


@broken_start.on_input
def on_broken_start(ctx, msg):
    return Go("report.descibe", keep=True)
