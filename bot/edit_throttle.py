"""Progress edits, coalesced: at most one edit per interval, and always ending on the latest text.

Discord rate-limits message edits; a job can change state faster than we may show it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class EditThrottle:
    """Shows a text by calling `edit`, no more often than once every `interval_s` seconds.

    `update` is called on every poll with the current text; a text that arrives too soon after
    the last edit is shown by a later `update` (or by `show_now`) once the interval has passed.
    """

    def __init__(
        self,
        edit: Callable[[str], Awaitable[object]],
        interval_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._edit = edit
        self.interval_s = interval_s
        self._clock = clock
        self.shown: str | None = None
        self.edits = 0
        self._last: float | None = None

    def _wait_s(self) -> float:
        if self._last is None:
            return 0.0
        return max(0.0, self.interval_s - (self._clock() - self._last))

    async def _show(self, text: str) -> None:
        await self._edit(text)
        self.shown = text
        self.edits += 1
        self._last = self._clock()

    async def update(self, text: str) -> bool:
        """Show `text` if it is new and the interval has passed; returns whether it edited."""
        if text == self.shown or self._wait_s() > 0:
            return False
        await self._show(text)
        return True

    async def show_now(self, text: str) -> None:
        """Show a final text: waits out the interval rather than skipping it."""
        if text == self.shown:
            return
        wait = self._wait_s()
        if wait > 0:
            await asyncio.sleep(wait)
        await self._show(text)
