"""Importing this module registers every conversation state, command and menu item."""
from conversations import core  # noqa: F401
from conversations import linking  # noqa: F401  (one resident, two channels: /bagla)
from conversations import reports, staff_reports  # noqa: F401,E402  (problem reports, issue 4)
from conversations import broadcast  # noqa: F401,E402  (staff broadcasts, DUR/STOP, /abonelik: issue 3)
from conversations import events, volunteer  # noqa: F401,E402  (events, volunteer pools, reminders: issue 5)
from conversations import panel_link  # noqa: F401,E402  (/panel: a sign-in link to the staff console, issue 15)
