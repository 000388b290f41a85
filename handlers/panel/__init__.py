"""The staff console under /panel (issue 15): sign-in with a one-time link from the bot, the
signed-in staff member's account, and the admins' staff page. `mount(app, http_app)` adds it to
the FastAPI app (bot/http.py registers it); handlers/panel/web.py has the guard and headers,
handlers/panel/routes.py the pages."""
from __future__ import annotations

from fastapi.staticfiles import StaticFiles

from handlers.panel import admin, report_page, reports, routes, web


def mount(app, http_app) -> None:
    import xstatic.pkg.leaflet as leaflet
    import xstatic.pkg.leaflet_markercluster as markercluster

    http_app.state.katilim = app
    http_app.include_router(routes.router(app))         # first: /panel/login/totp before /panel/login/{token}
    http_app.include_router(report_page.router(app))
    http_app.include_router(admin.router(app))         # API keys, the audit log
    http_app.include_router(routes.public_router(app))
    http_app.include_router(reports.router(app))       # the dashboard (/panel/), the list, the map
    http_app.add_exception_handler(web.Denied, routes.denied_handler(app))
    # Static files: outside /panel, so the only /panel routes without a session are the sign-in ones.
    http_app.mount("/static/panel", StaticFiles(directory=str(web.STATIC)), name="panel-static")
    http_app.mount("/static/leaflet", StaticFiles(directory=leaflet.BASE_DIR), name="leaflet")
    http_app.mount("/static/markercluster", StaticFiles(directory=markercluster.BASE_DIR), name="markercluster")
    http_app.add_middleware(web.SecurityHeaders, csp=web.csp_for(app.settings))
