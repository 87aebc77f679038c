"""Results nobody is watching: requests that finished while the bot was down (or whose follow was
lost) are found in SQL (`JobService.undelivered`) and posted to their channel by a periodic sweep.
When the bot stops, the progress messages it kept say that the result will come there.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import discord

from bot import messages
from bot.destinations import ChannelDestination, Destination, Host
from engine.service.progress import Progress
from engine.service.requests import JobService

log = logging.getLogger(__name__)


class Delivering(Protocol):
    """What the sweep uses of the bot's deliveries (bot.posting.Deliveries, which starts the
    sweep: a Protocol, so this module does not import it back)."""

    bot: Host
    claimed_here: set[int]
    delivered_here: set[int]

    @property
    def jobs(self) -> JobService: ...

    async def deliver(self, p: Progress, destination: Destination) -> bool: ...

    async def release(self, request_id: int) -> None: ...


class Sweeper:
    """Every `interval_s`, posts the finished requests nobody delivered, through `deliveries`
    (its claims, so no two bot processes post one twice)."""

    def __init__(self, deliveries: Delivering, interval_s: float) -> None:
        self.deliveries = deliveries
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._forever(), name="motif-delivery-sweep"
            )

    def cancel(self) -> list[asyncio.Task[None]]:
        """Cancel the periodic sweep; returns its task to await (none when not started)."""
        task, self._task = self._task, None
        if task is None:
            return []
        task.cancel()
        return [task]

    async def sweep(self) -> list[int]:
        """Deliver finished requests that were never delivered; returns the ids posted."""
        d = self.deliveries
        posted = []
        for request_id in await asyncio.to_thread(d.jobs.undelivered):
            if request_id in d.claimed_here or request_id in d.delivered_here:
                continue
            d.claimed_here.add(request_id)
            try:
                p = await asyncio.to_thread(d.jobs.progress, request_id)
                if p.channel_id is None:
                    continue
                dest = ChannelDestination(d.bot, p.channel_id, p.user_discord_id)
                if await d.deliver(p, dest):
                    posted.append(request_id)
            except (discord.Forbidden, discord.NotFound) as exc:
                # The channel is gone or closed to us: retrying forever would not help.
                log.warning("cannot post request #%s (%s); giving up", request_id, exc)
                await asyncio.to_thread(d.jobs.mark_delivered, request_id)
            except Exception:
                log.exception("late delivery of request #%s failed; will retry", request_id)
                await d.release(request_id)
            finally:
                d.claimed_here.discard(request_id)
        return posted

    async def _forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("the delivery sweep failed; retrying later")
            await asyncio.sleep(self.interval_s)


async def say_restarting(watching: list[tuple[int, Destination]], timeout_s: float) -> None:
    """Progress messages this process kept would otherwise stay at their last stage ("…is
    queued") after it stops: say that the result will come to the channel (the next bot's
    sweep posts it there). Bounded by `timeout_s`; a failed edit is only logged."""
    edits = [
        destination.edit_progress(messages.restarting_text(request_id))
        for request_id, destination in watching
        if destination.can_edit_progress()
    ]
    if not edits:
        return
    try:
        results = await asyncio.wait_for(asyncio.gather(*edits, return_exceptions=True), timeout_s)
    except TimeoutError:
        log.warning("telling users about the restart took over %.0f s; stopping", timeout_s)
        return
    for failed in (r for r in results if isinstance(r, Exception)):
        log.info("could not tell a user about the restart: %r", failed)
