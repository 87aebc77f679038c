"""Submitting and following jobs: the plain functions behind `/compose`, buttons and the CLI.

No torch and no Discord here. Every check that can refuse a request runs before anything is
written; the request row and its queue message are written together or not at all.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from engine.errors import (
    BadParams,
    NotFound,
    QueueFull,
    QueueUnreachable,
    RateLimited,
    ServiceUnavailable,
)
from engine.music import catalog
from engine.music.request import ComposeOptions
from engine.queue import dispatch as queue_dispatch
from engine.service.consent import Consent
from engine.service.delivery import DeliveryLeases
from engine.service.options import follow_up_options, validate_options
from engine.service.progress import SEED_NAME, ArtifactInfo, Following, Progress, QueueStatus
from engine.service.request_seeds import keep_seed, kept_with_the_row, parse_seed, tune_seed
from engine.service.tunes import store_tune
from engine.service.users import (
    Requester,
    parse_queue_key,
    require_owner,
    require_visible,
    user_for,
    user_of,
)
from engine.settings import Settings
from engine.store.artifacts import ArtifactStore, store_for
from engine.store.db import dml, session_scope
from engine.store.records import (
    OPEN_STATES,
    Artifact,
    Request,
    RequestKind,
    RequestOrigin,
    RequestStatus,
    Tune,
    TuneSource,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

Dispatch = Callable[[int], None]


def _default_dispatch(settings: Settings) -> Dispatch:
    # looked up when called, so a test can replace the module's function
    return lambda request_id: queue_dispatch.dispatch_request(request_id, settings)


class JobService(Consent, DeliveryLeases, Following):
    """The engine's front door for the bot and the CLI, bound to one set of settings: submitting
    requests here; consent (engine.service.consent), delivery leases (engine.service.delivery)
    and following (engine.service.progress) from its bases."""

    def __init__(self, settings: Settings | None = None, *, dispatch: Dispatch | None = None):
        super().__init__(settings)
        self._dispatch = dispatch

    @property
    def dispatch(self) -> Dispatch:
        if self._dispatch is None:
            self._dispatch = _default_dispatch(self.settings)
        return self._dispatch

    @property
    def store(self) -> ArtifactStore:
        return store_for(self.settings.artifact_root)

    # --- users and tunes ----------------------------------------------------------------------
    # --- limits -------------------------------------------------------------------------------
    @staticmethod
    def _lock_limits(session: Session, user: User | None, guild_id: int | None) -> None:
        """Serialise check-then-insert per guild and per user, so that concurrent requests
        cannot all pass the same count. SQLite: the transaction began IMMEDIATE (one writer at
        a time). Postgres: a transaction-scoped advisory lock on the guild, then the user row
        (always in this order: no deadlock)."""
        if session.get_bind().dialect.name != "postgresql":
            return
        if guild_id is not None:
            session.execute(select(func.pg_advisory_xact_lock(guild_id)))
        if user is not None:
            session.execute(select(User.id).where(User.id == user.id).with_for_update())

    def _check_limits(
        self, session: Session, user: User | None, guild_id: int | None = None, *, lock: bool = True
    ) -> None:
        s = self.settings
        if lock:
            self._lock_limits(session, user, guild_id)
        queued = session.scalar(
            select(func.count(Request.id)).where(Request.status == RequestStatus.QUEUED)
        )
        if (queued or 0) >= s.queue_cap:
            raise QueueFull(
                f"The queue is full ({s.queue_cap} waiting). Try again in a minute.",
                retry_after_s=60,
            )
        if guild_id is not None:
            in_guild = session.scalar(
                select(func.count(Request.id)).where(
                    Request.guild_id == guild_id, Request.status.in_(OPEN_STATES)
                )
            )
            if (in_guild or 0) >= s.guild_max_open:
                raise QueueFull(
                    f"This server already has {in_guild} requests waiting or running (limit "
                    f"{s.guild_max_open}); try again in a minute.",
                    retry_after_s=60,
                )
        if user is None:
            return
        open_count = session.scalar(
            select(func.count(Request.id)).where(
                Request.user_id == user.id, Request.status.in_(OPEN_STATES)
            )
        )
        if (open_count or 0) >= s.user_max_concurrent:
            raise RateLimited(
                f"You already have {open_count} requests in progress (limit "
                f"{s.user_max_concurrent}); try again when one finishes.",
                retry_after_s=30,
            )
        since = utcnow() - timedelta(minutes=1)
        recent = list(
            session.scalars(
                select(Request.created_at)
                .where(Request.user_id == user.id, Request.created_at >= since)
                .order_by(Request.created_at)
            )
        )
        if len(recent) >= s.user_rate_per_min:
            wait = max(1.0, 60.0 - (utcnow() - recent[0]).total_seconds())
            raise RateLimited(
                f"You have made {len(recent)} requests in the last minute (limit "
                f"{s.user_rate_per_min}); try again in {math.ceil(wait)} s.",
                retry_after_s=wait,
            )

    @contextmanager
    def _writing(self, who: Requester) -> Iterator[tuple[Session, User | None, list[str]]]:
        """The transaction that writes a request: its user, the limits checked again under the
        write lock, and the keys of the seeds kept meanwhile (removed if it fails)."""
        with (
            kept_with_the_row(self.store) as kept,
            _unsaved_on_outage(),
            session_scope(self.url, immediate=True) as session,
        ):
            user = user_of(session, who)
            self._check_limits(session, user, who.guild_id)
            yield session, user, kept

    def precheck(self, who: Requester) -> None:
        """The limits, read-only, before anything is downloaded or parsed: a refusal costs one
        query. (`compose` checks again, atomically, when it writes.)"""
        with session_scope(self.url) as session:
            user = None
            if who.discord_id is not None:
                user = session.scalar(select(User).where(User.discord_id == who.discord_id))
            self._check_limits(session, user, who.guild_id, lock=False)

    # --- submitting ---------------------------------------------------------------------------
    def compose(
        self,
        who: Requester,
        options: ComposeOptions,
        seed_midi: bytes | None = None,
        seed_name: str = "",
        seed_owner: Requester | None = None,
    ) -> int:
        """Validate the seed, record the request and queue it. Returns the request id.

        The seed is MIDI, or ABC / MusicXML when `seed_name` ends in .abc, .musicxml, .xml or
        .mxl: those are parsed now (in a bounded child process) and kept as MIDI.
        `seed_owner`: whose music the seed is, when not the requester's ("Continue this MIDI" on
        someone's message: its author). The seed's consent is that person's to give."""
        piece = None
        notices: dict[str, Any] = {}
        if seed_midi is not None:
            # the limits before any parse, for every kind of seed (pasted ABC too): a user at
            # the cap costs one query, not a parse
            with _unsaved_on_outage():
                self.precheck(who)
            # a clear MotifError (BadMidi, a notation error) when the file is refused
            seed_midi, piece, notices = parse_seed(
                seed_midi, seed_name, options, parse_queue_key(who)
            )
        elif options.from_bar is not None:
            raise BadParams("from_bar needs a seed file to cut.")
        with self._writing(who) as (session, user, kept):
            tune = None
            if piece is not None and seed_midi is not None:
                owner = user if seed_owner is None else user_of(session, seed_owner)
                consent = bool(owner and owner.share_by_default)
                tune = store_tune(
                    session,
                    self.store,
                    seed_midi,
                    piece,
                    source=TuneSource.SEED,
                    owner_id=owner.id if owner else None,
                    name=seed_name,
                    consent=consent,
                )
            rid = self._enqueue(
                session, who, user, RequestKind.COMPOSE, options, tune, None, notices
            )
            if piece is not None and tune is not None:  # parsed once: the worker continues it
                ref = (tune.midi_key, tune.name, tune.content_hash)
                kept.append(keep_seed(self.store, rid, ref, piece, options))
        self._send(rid)
        return rid

    def follow_up(
        self,
        who: Requester,
        parent_id: int,
        kind: RequestKind,
        *,
        bars: int | None = None,
        temperature: float | None = None,
        rng_seed: int | None = None,
    ) -> int:
        """Reroll (same settings, new sample), extend (continue the result) or vary a request."""
        extend = kind is RequestKind.EXTEND
        with _unsaved_on_outage(), session_scope(self.url) as session:  # read only: no lock held
            parent = session.get(Request, parent_id)
            if parent is None:
                raise NotFound(f"request #{parent_id} does not exist.")
            require_visible(session, parent, who)
            if extend and (parent.status is not RequestStatus.DONE or not parent.result_tune_id):
                raise BadParams(f"request #{parent_id} has no finished result to extend yet.")
            if kind is RequestKind.VARIATION and temperature is None:
                raise BadParams("a variation needs a temperature.")
            options = follow_up_options(
                ComposeOptions.from_params(parent.params),
                extend=extend,
                bars=bars,
                temperature=temperature,
                rng_seed=rng_seed,
                settings=self.settings,
            )
            tune_id = parent.result_tune_id if extend else parent.seed_tune_id
            tune = session.get(Tune, tune_id) if tune_id else None
            ref = (tune.midi_key, tune.name, tune.content_hash) if tune else None
            seed_notes = (
                {SEED_NAME: f"the result of #{parent.id}"} if extend else dict(parent.notes or {})
            )
            seed_notes.pop("shortened", None)  # about the parent's audio, not the seed
        with _unsaved_on_outage():
            self.precheck(who)  # the limits, read only, before the tune is read
        seed = tune_seed(self.store, ref, options) if ref else None  # outside any transaction
        with self._writing(who) as (session, user, kept):
            tune = session.get(Tune, tune_id) if tune_id else None
            rid = self._enqueue(session, who, user, kind, options, tune, parent_id, seed_notes)
            if seed is not None and ref is not None:
                kept.append(keep_seed(self.store, rid, ref, seed, options))
        self._send(rid)
        return rid

    def _enqueue(
        self,
        session: Session,
        who: Requester,
        user: User | None,
        kind: RequestKind,
        options: ComposeOptions,
        tune: Tune | None,
        parent_id: int | None,
        notices: dict[str, Any] | None = None,
    ) -> int:
        if options.rng_seed is None:
            # Every request records the seed it was sampled with, so any result can be replayed.
            options = replace(options, rng_seed=random.randint(0, catalog.MAX_RNG_SEED))
        request = Request(
            user_id=user.id if user else None,
            guild_id=who.guild_id,
            channel_id=who.channel_id,
            interaction_id=who.interaction_id,
            origin=who.origin,
            kind=kind,
            params=options.to_params(),
            seed_tune_id=tune.id if tune else None,
            parent_id=parent_id,
            status=RequestStatus.QUEUED,
            timings={},
            notes=dict(notices or {}),  # what the reply tells the user about the seed
        )
        session.add(request)
        session.flush()
        return request.id

    def _send(self, request_id: int) -> None:
        """The outbox: the row is committed first (sent_at empty), then its message goes out,
        never inside a transaction. If the send fails the row stays queued and unsent, and
        the reaper sends it when the broker is back; the caller is told exactly that."""
        try:
            self.dispatch(request_id)
        except QueueUnreachable as exc:
            raise QueueUnreachable(
                f"The job queue is unreachable right now. Your request #{request_id} is saved "
                "and will start as soon as the queue is back.",
                detail=exc.detail,
                saved=True,
            ) from exc
        mark_sent([request_id], self.settings)

    # --- following (progress, history, queue status: engine.service.progress) ----------------
    def artifact_bytes(self, info: ArtifactInfo) -> bytes:
        return self.store.get(info.key)

    def cancel(self, request_id: int, who: Requester) -> bool:
        """Withdraw a request that no worker has taken yet; False once one has (or it ended).
        Only its owner may: a Discord user their own, the command line what it asked for."""
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            from_cli = who.discord_id is None and who.origin == RequestOrigin.CLI
            if not (from_cli and req.user_id is None and req.origin == RequestOrigin.CLI):
                require_owner(session, req, who)
            result = dml(
                session,
                update(Request)
                .where(Request.id == request_id, Request.status == RequestStatus.QUEUED)
                .values(status=RequestStatus.CANCELLED, finished_at=utcnow()),
            )
            return bool(result.rowcount)


def mark_sent(request_ids: list[int], settings: Settings) -> None:
    """Record that these rows' messages reached the broker (best effort: a row left unmarked
    is only sent once more, and tasks are idempotent)."""
    try:
        with session_scope(settings.sqlalchemy_url) as session:
            session.execute(
                update(Request).where(Request.id.in_(request_ids)).values(sent_at=utcnow())
            )
    except ServiceUnavailable:
        log.warning("could not mark requests %s as sent", request_ids, exc_info=True)


@contextmanager
def _unsaved_on_outage() -> Iterator[None]:
    """Around a submitting transaction: a database outage there means nothing was saved."""
    try:
        yield
    except QueueUnreachable:
        raise
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            "The database is unreachable; nothing was saved. Try again shortly.",
            detail=exc.detail,
        ) from exc


__all__ = [
    "user_for",
    "Artifact",
    "ComposeOptions",
    "JobService",
    "ArtifactInfo",
    "Progress",
    "QueueStatus",
    "Requester",
    "validate_options",
]
