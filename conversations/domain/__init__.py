"""Domain operations: one function per staff action, called by the chat, the CLI, Open311 and the console."""
