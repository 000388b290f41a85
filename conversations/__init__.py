"""Channel-agnostic conversations: pure steps from (state, inbound) to (new state, outbound).

Nothing in this package imports telegram, twilio or fastapi.
"""
