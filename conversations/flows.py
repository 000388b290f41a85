"""Importing this module registers every conversation state, command and menu item."""
from conversations import core  # noqa: F401
