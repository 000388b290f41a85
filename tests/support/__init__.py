"""What the tests share: `chat.Chat`, the one driver of a conversation through the real engine;
`telegram` (the `tg` fixture, registered in tests/conftest.py, and `TelegramChat`, a person talking
to the running bot through the fake Telegram server); `texts`, whole expected messages that are
built from several catalog entries."""
