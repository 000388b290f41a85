"""Domain operations: what staff (and residents) do, each checking its actor, auditing and writing
its change with its outbox rows in the caller's transaction (docs/CONTRIBUTING.md)."""
