"""A bounded queue of decoded events between the websocket reader and the writer.

Bounded in events, not items: when it is full the reader awaits, stops reading the
socket, and TCP pushes back on the server. Nothing is ever dropped.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class EventQueue(Generic[T]):
    """FIFO with a capacity; `put` waits while full, `take` returns up to n items."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[T] = deque()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self._enough = asyncio.Event()  # set once `take` has what it waits for
        self._want = 1

    def __len__(self) -> int:
        return len(self._items)

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full."""
        while len(self._items) >= self.capacity:
            self._not_full.clear()
            await self._not_full.wait()
        self._items.append(item)
        if len(self._items) >= self._want:
            self._enough.set()

    async def take(self, n: int, wait_s: float) -> list[T]:
        """Up to ``n`` items, once ``n`` are queued (or the queue is full) or ``wait_s`` has
        passed; may be empty."""
        # Wake only when n items (or a full queue) are there: one wake-up per batch,
        # not one per event.
        want = min(n, self.capacity)
        if len(self._items) < want and wait_s > 0:
            self._want = want
            self._enough.clear()
            try:
                await asyncio.wait_for(self._enough.wait(), wait_s)
            except TimeoutError:
                pass
            finally:
                self._want = 1
        count = min(n, len(self._items))
        items = [self._items.popleft() for _ in range(count)]
        if len(self._items) < self.capacity:
            self._not_full.set()
        return items
