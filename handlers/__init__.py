"""Channel adapters: each turns its channel's input into conversations.messages.Inbound and
renders Outbound for its channel (telegram, whatsapp, console)."""
