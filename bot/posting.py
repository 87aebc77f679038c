"""Following jobs until they finish and posting the results where they were asked for.

Progress goes into the interaction's original response while its token lives (15 minutes);
results that finish later go to the channel with a mention, and results that finished while the
bot was down are found in SQL by a background sweep (bot/sweep.py). Several bot
processes may share one database: each result is posted by the one holding its delivery claim
(`JobService.claim_delivery`, a lease renewed while it watches), so nobody sees it twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import discord

from bot import messages
from bot.destinations import (
    PICTURE_KINDS,
    Destination,
    Host,
    InteractionDestination,
    TokenExpired,
    Upload,
    fit_uploads,
    inline_picture,
)
from bot.edit_throttle import EditThrottle
from bot.sweep import Sweeper, say_restarting
from bot.views import progress_view, result_view
from engine.service.notify import RequestWakeups
from engine.service.progress import ArtifactInfo, Progress
from engine.service.requests import JobService
from engine.store.records import RequestStatus

log = logging.getLogger(__name__)


# --- following jobs ---------------------------------------------------------------------------
class Deliveries:
    """Background tasks that watch requests and training runs and post what they produce."""

    def __init__(
        self,
        bot: Host,
        *,
        poll_interval_s: float = 1.0,
        sweep_interval_s: float = 30.0,
        token_ttl_s: float = 14 * 60,
        max_follow_s: float = 6 * 3600,
        claim_lease_s: float = 60.0,
    ) -> None:
        self.bot = bot
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.claim_lease_s = claim_lease_s
        # claims and releases run in order on one thread: a release never overtakes the claim
        # it gives back (a follow cancelled while its claim is in flight)
        self._claims = ThreadPoolExecutor(max_workers=1, thread_name_prefix="motif-claims")
        self.poll_interval_s = poll_interval_s
        self.token_ttl_s = token_ttl_s
        self.max_follow_s = max_follow_s
        # requests this process follows or sweeps now, and those it has delivered (the sweep
        # leaves both alone)
        self.claimed_here: set[int] = set()
        self.delivered_here: set[int] = set()
        self._tasks: set[asyncio.Task[object]] = set()
        self.sweeper = Sweeper(self, sweep_interval_s)
        # requests whose progress message this process keeps, until their result is ready
        self._watching: dict[int, Destination] = {}
        # woken as soon as a worker publishes a change (Redis or Postgres); None: poll only
        self.wakeups: RequestWakeups | None = None

    @property
    def jobs(self) -> JobService:
        return self.bot.jobs

    def for_interaction(
        self, interaction: discord.Interaction, *, ephemeral: bool = False
    ) -> InteractionDestination:
        return InteractionDestination(
            self.bot, interaction, token_ttl_s=self.token_ttl_s, ephemeral=ephemeral
        )

    def _spawn(self, coro: Awaitable[object], name: str) -> asyncio.Task[object]:
        task = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- requests -----------------------------------------------------------------------------
    def follow(self, request_id: int, destination: Destination) -> asyncio.Task[object]:
        """Show the request's progress and post its result; returns the watching task."""
        self.claimed_here.add(request_id)
        return self._spawn(self._follow(request_id, destination), f"motif-follow-{request_id}")

    async def _claim(self, request_id: int) -> bool:
        return await asyncio.get_running_loop().run_in_executor(
            self._claims, self.jobs.claim_delivery, request_id, self.owner, self.claim_lease_s
        )

    async def release(self, request_id: int) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._claims, self.jobs.release_delivery, request_id, self.owner
        )

    async def _follow(self, request_id: int, destination: Destination) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_follow_s
        status: list[RequestStatus] = []  # the status of the latest poll, whose text is shown

        async def edit(text: str) -> None:
            # a Cancel button while the request waits in the queue, none once a worker has it
            queued = bool(status) and status[-1] is RequestStatus.QUEUED
            await destination.edit_progress(text, progress_view(request_id) if queued else None)

        throttle = EditThrottle(edit, self.bot.settings.progress_edit_interval_s)
        progress_alive = True
        delivered = False
        try:
            if not await self._claim(request_id):
                log.info("request #%s is being delivered by another bot process", request_id)
                return
            renewed = loop.time()
            self._watching[request_id] = destination
            if self.wakeups is not None:
                self.wakeups.watch(request_id)
            while True:
                p = await asyncio.to_thread(self.jobs.progress, request_id)
                status[:] = [p.status]
                if p.finished:
                    break
                if progress_alive and destination.can_edit_progress():
                    try:
                        await throttle.update(messages.progress_text(p))
                    except (discord.HTTPException, TokenExpired) as exc:
                        log.info("progress edits for #%s stopped: %s", request_id, exc)
                        progress_alive = False
                if loop.time() > deadline:
                    log.warning("stopped following #%s; the sweep will deliver it", request_id)
                    return
                if loop.time() - renewed > self.claim_lease_s / 3:
                    if not await self._claim(request_id):
                        log.warning("lost the delivery claim of #%s; not posting it", request_id)
                        return
                    renewed = loop.time()
                if self.wakeups is not None:
                    await self.wakeups.wait(request_id, self.poll_interval_s)
                else:
                    await asyncio.sleep(self.poll_interval_s)
            self._watching.pop(request_id, None)  # from here on the result is being posted
            delivered = await self.deliver(p, destination, throttle if progress_alive else None)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivering request #%s failed; the sweep will retry", request_id)
        finally:
            self._watching.pop(request_id, None)
            if self.wakeups is not None:
                self.wakeups.unwatch(request_id)
            self.claimed_here.discard(request_id)
            if not delivered:
                await asyncio.shield(self.release(request_id))

    async def deliver(
        self, p: Progress, destination: Destination, throttle: EditThrottle | None = None
    ) -> bool:
        """Post a finished request (result, failure or cancellation) and record the delivery.
        False, posting nothing, when another bot process holds the request's delivery claim."""
        if not await self._claim(p.request_id):
            log.info("request #%s is being delivered by another bot process", p.request_id)
            return False
        final = messages.progress_text(p)
        shown = False
        if destination.can_edit_progress():
            throttle = throttle or EditThrottle(
                destination.edit_progress, self.bot.settings.progress_edit_interval_s
            )
            try:
                await throttle.show_now(final)
                shown = True
            except (discord.HTTPException, TokenExpired) as exc:
                log.info("final progress edit for #%s failed: %s", p.request_id, exc)
        if p.status is RequestStatus.DONE:
            uploads, left_out = fit_uploads(await self._uploads(p), destination.upload_limit)
            choice = p.params.get("image") or self.bot.settings.inline_image
            uploads = inline_picture(uploads, choice)
            image = next(
                (u.filename for u in uploads if u.kind in PICTURE_KINDS.values() and not u.spoiler),
                None,
            )
            await destination.post(
                messages.result_content(p),
                embed=messages.result_embed(p, image_filename=image, left_out=left_out),
                uploads=uploads,
                view=result_view(p.request_id),
            )
        elif not shown and p.status is RequestStatus.FAILED:
            await destination.post(messages.failure_text(p))
        await asyncio.to_thread(self.jobs.mark_delivered, p.request_id)
        self.delivered_here.add(p.request_id)
        log.info("delivered request #%s (%s)", p.request_id, p.status.value)
        return True

    async def _uploads(self, p: Progress) -> list[Upload]:
        def load(info: ArtifactInfo) -> Upload:
            return Upload(info.filename, self.jobs.artifact_bytes(info), info.kind)

        return [await asyncio.to_thread(load, a) for a in p.artifacts]

    # --- training runs ------------------------------------------------------------------------
    def follow_run(
        self,
        run_id: int,
        destination: Destination,
        run_info: Callable[[int], object],
        loss_curve: Callable[[str], bytes],
    ) -> asyncio.Task[object]:
        return self._spawn(
            self._follow_run(run_id, destination, run_info, loss_curve), f"motif-run-{run_id}"
        )

    async def _follow_run(self, run_id, destination, run_info, loss_curve) -> None:
        throttle = EditThrottle(
            destination.edit_progress, self.bot.settings.progress_edit_interval_s
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_follow_s
        try:
            while True:
                info = await asyncio.to_thread(run_info, run_id)
                if info.status in messages.RUN_FINISHED:
                    break
                if loop.time() > deadline:
                    await destination.post(
                        f"Training run #{run_id} is still {info.status}; I stopped watching it. "
                        "`/model list` shows its candidate when it is done."
                    )
                    return
                if destination.can_edit_progress():
                    try:
                        await throttle.update(messages.run_progress_text(info))
                    except (discord.HTTPException, TokenExpired) as exc:
                        log.info("run progress edits stopped: %s", exc)
                await asyncio.sleep(self.poll_interval_s)
            uploads = []
            if info.loss_curve_key:
                try:
                    data = await asyncio.to_thread(loss_curve, info.loss_curve_key)
                    uploads.append(Upload(f"loss-run-{run_id}.png", data, "image"))
                except Exception:
                    log.warning("no loss curve for run %s", run_id, exc_info=True)
            await destination.post(messages.run_final_text(info), uploads=uploads)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reporting training run %s failed", run_id)

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.wakeups is not None:
            self.wakeups.start()
        self.sweeper.start()

    async def stop(self, notice_timeout_s: float = 5.0) -> None:
        watching = list(self._watching.items())  # (the follows forget them when cancelled)
        tasks = list(self._tasks) + self.sweeper.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.wakeups is not None:
            await self.wakeups.stop()
        # after the follows stopped, so no progress edit of theirs lands after this one
        await say_restarting(watching, notice_timeout_s)
        # the claims given back by the cancelled tasks are written before the bot says it stopped
        claims, self._claims = self._claims, ThreadPoolExecutor(1, "motif-claims")
        await asyncio.get_running_loop().run_in_executor(claims, lambda: None)
        claims.shutdown(wait=False)
