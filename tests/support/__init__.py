"""What the tests share: `chat.Chat`, the one driver of a conversation through the real engine,
and `telegram`, the fake Telegram Bot API server as a fixture (registered in tests/conftest.py)."""
