"""Per-account state kept in memory only while the account is active.

A long-running process sees every resident of the city sooner or later; a plain dict keyed by chat
grows with each of them. `IdleMap` keeps its entries in order of last use and drops, on each use,
those unused for `idle` seconds (O(1) amortised: each entry leaves once), so it holds only the
accounts active in the last `idle` seconds, and never more than `limit`. Use it for state that is
the same as absent once idle long enough (a token bucket that has filled up again).
Not thread-safe: callers hold their own lock.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class IdleMap(Generic[K, V]):
    """A map whose entries leave once unused for `idle` seconds; `used_at(value)` is the monotonic
    time the value was last used (the caller keeps it in the value)."""

    def __init__(self, idle: float, used_at: Callable[[V], float], limit: int = 50_000) -> None:
        self.idle = idle
        self.used_at = used_at
        self.limit = max(1, limit)
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._entries.get(key, default)

    def pop(self, key: K) -> V | None:
        return self._entries.pop(key, None)

    def put(self, key: K, value: V, now: float) -> None:
        """Store value as the most recently used entry; drop the entries idle since before
        now - idle (and the least recently used ones past `limit`)."""
        entries = self._entries
        horizon = now - self.idle
        while entries:
            first = next(iter(entries))
            if self.used_at(entries[first]) > horizon and (len(entries) < self.limit or key in entries):
                break
            del entries[first]
        entries[key] = value
        entries.move_to_end(key)
