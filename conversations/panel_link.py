"""/panel: a staff member asks the bot for a one-time sign-in link to the staff console.

The link (PUBLIC_BASE_URL/panel/login/<token>) is valid for 10 minutes, signs in once and only
as that staff record (storage/panel.py). It is sent without a link preview: a preview fetch would
open it (the page it opens only shows a "Giriş yap" button; signing in is the button's POST, so a
fetch spends nothing either way). Anyone who is not active staff is refused politely and the
attempt is audited, as for every staff command. `katilim staff login-link ID` prints the same
link, through the same function."""
from __future__ import annotations

from conversations.i18n import N_
from conversations.registry import Router
from conversations.step import Ctx, Stay, Transition, refuse_staff
from storage import panel
from storage.audit import audit
from storage.staff import staff_for

router = Router("panel_link")

LOGIN_PATH = "/panel/login/"


def base_url(settings) -> str:
    """Where the console is reached: PUBLIC_BASE_URL, else this server's own address."""
    public = getattr(settings, "public_base_url", "") if settings is not None else ""
    if public:
        return public
    host = getattr(settings, "http_host", "127.0.0.1") or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    port = getattr(settings, "http_port", 8080)
    return f"http://{host}:{port}"


def issue_login_link(db, settings, staff, *, via: str, actor: str) -> str:
    """A new one-time sign-in link for an active staff member (audited as panel.link_issued)."""
    token = panel.issue_login_token(db, staff.id, via)
    audit(db, actor, "panel.link_issued", f"staff:{staff.id}", via=via)
    return base_url(settings) + LOGIN_PATH + token


router.menu_item(105, "staff_panel", N_("menu.staff_panel"), "cmd:panel", staff=True)


@router.command("panel", "panel", "konsol", "console", menu={"tr": "panel", "en": "panel", "ar": "panel"},
                description=N_("command.staff_panel"), staff=True)
def cmd_panel(ctx: Ctx, text: str) -> Transition:
    staff = staff_for(ctx.db, ctx.channel, ctx.identity.address)
    if staff is None:
        refuse_staff(ctx, "panel")
        return Stay()
    url = issue_login_link(ctx.db, ctx.config.settings, staff, via=ctx.channel, actor=f"staff:{staff.id}")
    ctx.say(ctx.t("staff.panel_link", url=url, minutes=int(panel.LOGIN_TTL.total_seconds() // 60)),
            link_preview=False)
    return Stay()
