"""Submitting and following jobs: the plain functions behind `/compose`, buttons and the CLI.

No torch and no Discord here. Every check that can refuse a request runs before anything is
written; the request row and its queue message are written together or not at all.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
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
from engine.music.midi import load_seed, seed_notices
from engine.music.notation import is_notation_name, load_notation_seed
from engine.music.notes import Piece
from engine.service.consent import Consent
from engine.service.delivery import DeliveryLeases
from engine.service.users import Requester, require_owner, user_for, user_of
from engine.settings import Settings, get_settings
from engine.store.artifacts import ArtifactStore, store_for
from engine.store.db import dml, session_scope
from engine.store.records import (
    OPEN_STATES,
    RUNNING_STATES,
    Artifact,
    ModelVersion,
    Request,
    RequestKind,
    RequestOrigin,
    RequestStatus,
    Tune,
    TuneSource,
    User,
    Worker,
    utcnow,
)
from engine.store.records import (
    alive_since as worker_alive_since,
)

log = logging.getLogger(__name__)

Dispatch = Callable[[int], None]


@dataclass(frozen=True)
class ComposeOptions:
    bars: int = 8
    style: str | None = None
    temperature: float = 1.0
    top_p: float = 0.95
    instrument: int = 0  # General MIDI program
    tempo: float | None = None  # BPM override; None keeps the seed's
    rng_seed: int | None = None
    image: str | None = None  # the picture shown inline: "score" | "pianoroll"; None: the setting
    from_bar: int | None = None  # the seed is the file's bars before this one; None: all of it

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ComposeOptions:
        known = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        return cls(**known)


def _whole(value: object, low: int, high: int) -> bool:
    """A whole number (not a bool) within [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _style(style: str | None) -> str | None:
    if style is None or style in ("", "none"):
        return None
    if style not in catalog.STYLES:
        raise BadParams(f"unknown style {style!r}; choose one of: {', '.join(catalog.STYLES)}.")
    return style


def _program(instrument: str | int | None) -> int:
    """The General MIDI program of an instrument given by name or program number."""
    if instrument is None or instrument == "":
        return 0
    if isinstance(instrument, int) and not isinstance(instrument, bool):
        if instrument not in catalog.PROGRAM_NAMES:
            raise BadParams("unknown instrument; pick one from the list.")
        return instrument
    if isinstance(instrument, str) and instrument.strip().lower() in catalog.INSTRUMENTS:
        return catalog.INSTRUMENTS[instrument.strip().lower()]
    raise BadParams(
        f"unknown instrument {instrument!r}; choose one of: {', '.join(catalog.INSTRUMENTS)}."
    )


def validate_options(
    *,
    bars: int | None = None,
    style: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    instrument: str | int | None = None,
    tempo: float | None = None,
    rng_seed: int | None = None,
    image: str | None = None,
    settings: Settings | None = None,
    from_bar: int | None = None,
) -> ComposeOptions:
    """Check every option server-side (Discord does not enforce ranges) and normalise it."""
    s = settings or get_settings()
    bars = s.default_bars if bars is None else bars
    if not isinstance(bars, int) or isinstance(bars, bool) or not 1 <= bars <= s.max_bars:
        raise BadParams(f"bars must be a whole number from 1 to {s.max_bars}.")
    style = _style(style)
    temperature = 1.0 if temperature is None else float(temperature)
    if not math.isfinite(temperature) or not (
        catalog.MIN_TEMPERATURE <= temperature <= catalog.MAX_TEMPERATURE
    ):
        raise BadParams(
            f"temperature must be between {catalog.MIN_TEMPERATURE} and {catalog.MAX_TEMPERATURE}."
        )
    top_p = 0.95 if top_p is None else float(top_p)
    if not math.isfinite(top_p) or not catalog.MIN_TOP_P <= top_p <= catalog.MAX_TOP_P:
        raise BadParams(f"top_p must be between {catalog.MIN_TOP_P} and {catalog.MAX_TOP_P}.")
    program = _program(instrument)
    if tempo is not None:
        tempo = float(tempo)
        if not math.isfinite(tempo) or not catalog.MIN_TEMPO <= tempo <= catalog.MAX_TEMPO:
            raise BadParams(
                f"tempo must be between {catalog.MIN_TEMPO:g} and {catalog.MAX_TEMPO:g} BPM."
            )
    if rng_seed is not None and not _whole(rng_seed, 0, catalog.MAX_RNG_SEED):
        raise BadParams(f"rng_seed must be a whole number from 0 to {catalog.MAX_RNG_SEED}.")
    if image is not None and image not in catalog.INLINE_IMAGES:
        raise BadParams(f"image must be one of: {', '.join(catalog.INLINE_IMAGES)}.")
    if from_bar is not None and not _whole(from_bar, 2, catalog.MAX_FROM_BAR):
        raise BadParams(
            f"from_bar must be a whole number from 2 to {catalog.MAX_FROM_BAR} (the bars before "
            "it are the seed); leave it out to continue from the end."
        )
    return ComposeOptions(
        bars=bars,
        style=style,
        temperature=temperature,
        top_p=top_p,
        instrument=program,
        tempo=tempo,
        rng_seed=rng_seed,
        image=image,
        from_bar=from_bar,
    )


@dataclass(frozen=True)
class ArtifactInfo:
    kind: str
    key: str
    size: int
    content_type: str
    filename: str


@dataclass(frozen=True)
class Progress:
    request_id: int
    status: RequestStatus
    kind: RequestKind
    queue_position: int | None
    params: dict[str, Any]
    model_version: str | None
    device: str | None
    worker: str | None
    timings: dict[str, float]
    notes: dict[str, Any]
    error_user: str | None
    seed_name: str | None
    channel_id: int | None
    user_discord_id: int | None
    artifacts: list[ArtifactInfo] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.finished


@dataclass(frozen=True)
class QueueStatus:
    queued: int
    running: int
    workers: list[str]  # host names: for operators (`motif status`), not for chat
    active_model: str | None
    worker_counts: list[str] = field(default_factory=list)  # "2 × gpu,train on cuda": for chat


def tune_for(session: Session, new: Tune) -> Tune:
    """Insert-or-get on the content hash: the stored tune with `new`'s hash, or `new` inserted.
    Two uploads of the same file at once both get the one row (no IntegrityError escapes)."""
    tune = session.scalar(select(Tune).where(Tune.content_hash == new.content_hash))
    if tune is not None:
        return tune
    try:
        with session.begin_nested():
            session.add(new)
        return new
    except IntegrityError:
        # Another request stored the same tune between our read and our insert.
        tune = session.scalar(select(Tune).where(Tune.content_hash == new.content_hash))
        assert tune is not None
        return tune


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_tune(
    session: Session,
    store: ArtifactStore,
    midi: bytes,
    piece: Piece,
    *,
    source: TuneSource,
    owner_id: int | None,
    name: str = "",
    consent: bool = False,
) -> Tune:
    """Keep a tune once per content hash (a seed at submission, a result when generated); the
    MIDI bytes go to the artifact store."""
    digest = content_hash(midi)
    key = f"tunes/{digest[:2]}/{digest}.mid"
    known = session.scalar(select(Tune.id).where(Tune.content_hash == digest)) is not None
    if not known and not store.exists(key):
        store.put(key, midi)
    return tune_for(
        session,
        Tune(
            content_hash=digest,
            source=source,
            owner_id=owner_id,
            name=name[:200],
            midi_key=key,
            note_count=len(piece.notes),
            duration_s=round(piece.duration_s, 3),
            consent=consent,
            consent_at=utcnow() if consent else None,
        ),
    )


def _default_dispatch(settings: Settings) -> Dispatch:
    from engine.worker.dispatch import dispatch_request  # celery only, no torch

    return lambda request_id: dispatch_request(request_id, settings)


class JobService(Consent, DeliveryLeases):
    """The engine's front door for the bot and the CLI, bound to one set of settings: submitting
    and following requests here, consent (engine.service.consent) and delivery leases
    (engine.service.delivery) from its bases."""

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
            remarks: tuple[str, ...] = ()
            if is_notation_name(seed_name):
                notation = load_notation_seed(seed_midi, seed_name)  # a clear MotifError
                seed_midi, remarks = notation.midi, notation.remarks  # kept as MIDI from here
            # raises BadMidi with a clear message
            piece = load_seed(seed_midi, name=seed_name, from_bar=options.from_bar)
            notices = dict(seed_notices(piece))
            if remarks:  # e.g. "the ABC held 3 tunes": the result says so
                notices["seed_remarks"] = list(remarks)
        elif options.from_bar is not None:
            raise BadParams("from_bar needs a seed file to cut.")
        with _unsaved_on_outage(), session_scope(self.url, immediate=True) as session:
            user = user_of(session, who)
            self._check_limits(session, user, who.guild_id)
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
        with _unsaved_on_outage(), session_scope(self.url, immediate=True) as session:
            parent = session.get(Request, parent_id)
            if parent is None:
                raise NotFound(f"request #{parent_id} does not exist.")
            options = ComposeOptions.from_params(parent.params)
            seed_tune_id = parent.seed_tune_id
            if kind is RequestKind.EXTEND:
                if parent.status is not RequestStatus.DONE or parent.result_tune_id is None:
                    raise BadParams(f"request #{parent_id} has no finished result to extend yet.")
                seed_tune_id = parent.result_tune_id
            if kind is RequestKind.VARIATION and temperature is None:
                raise BadParams("a variation needs a temperature.")
            # a reroll or a variation cuts the same seed; an extension continues the whole result
            from_bar = None if kind is RequestKind.EXTEND else options.from_bar
            options = validate_options(
                bars=bars if bars is not None else options.bars,
                style=options.style,
                temperature=temperature if temperature is not None else options.temperature,
                top_p=options.top_p,
                instrument=options.instrument,
                tempo=options.tempo,
                rng_seed=rng_seed
                if rng_seed is not None
                else random.randint(0, catalog.MAX_RNG_SEED),
                image=options.image,
                settings=self.settings,
                from_bar=from_bar,
            )
            user = user_of(session, who)
            self._check_limits(session, user, who.guild_id)
            tune = session.get(Tune, seed_tune_id) if seed_tune_id else None
            seed_notes = {} if kind is RequestKind.EXTEND else dict(parent.notes or {})
            seed_notes.pop("shortened", None)  # about the parent's audio, not the seed
            rid = self._enqueue(session, who, user, kind, options, tune, parent.id, seed_notes)
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

    # --- following ----------------------------------------------------------------------------
    def progress(self, request_id: int) -> Progress:
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            position = None
            if req.status is RequestStatus.QUEUED:
                ahead = session.scalar(
                    select(func.count(Request.id)).where(
                        Request.status == RequestStatus.QUEUED, Request.id < req.id
                    )
                )
                position = (ahead or 0) + 1
            seed_name = req.seed_tune.name if req.seed_tune else None
            user_discord_id = req.user.discord_id if req.user else None
            return Progress(
                request_id=req.id,
                status=req.status,
                kind=req.kind,
                queue_position=position,
                params=dict(req.params),
                model_version=req.model_version,
                device=req.device,
                worker=req.worker,
                timings=dict(req.timings or {}),
                notes=dict(req.notes or {}),
                error_user=req.error_user,
                seed_name=seed_name,
                channel_id=req.channel_id,
                user_discord_id=user_discord_id,
                artifacts=[
                    ArtifactInfo(
                        kind=a.kind.value,
                        key=a.key,
                        size=a.size,
                        content_type=a.content_type,
                        filename=a.key.rsplit("/", 1)[-1],
                    )
                    for a in sorted(req.artifacts, key=lambda a: a.kind.value)
                ],
            )

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

    def history(self, who: Requester, limit: int = 10) -> list[Progress]:
        with session_scope(self.url) as session:
            user = user_of(session, who)
            if user is None:
                return []
            ids = list(
                session.scalars(
                    select(Request.id)
                    .where(Request.user_id == user.id)
                    .order_by(Request.id.desc())
                    .limit(max(1, min(limit, 25)))
                )
            )
        return [self.progress(i) for i in ids]

    def queue_status(self) -> QueueStatus:
        with session_scope(self.url) as session:
            queued = session.scalar(
                select(func.count(Request.id)).where(Request.status == RequestStatus.QUEUED)
            )
            running = session.scalar(
                select(func.count(Request.id)).where(Request.status.in_(RUNNING_STATES))
            )
            alive_since = worker_alive_since(self.settings.worker_heartbeat_s)
            alive = list(session.scalars(select(Worker).where(Worker.last_seen >= alive_since)))
            workers = [f"{w.hostname} [{w.queues}] on {w.device or '?'}" for w in alive]
            kinds = Counter((w.queues, w.device or "?") for w in alive)
            counts = [
                f"{n} × {queues} on {device}" for (queues, device), n in sorted(kinds.items())
            ]
            active = session.scalar(select(ModelVersion.version).where(ModelVersion.active))
            return QueueStatus(
                queued=queued or 0,
                running=running or 0,
                workers=workers,
                active_model=active,
                worker_counts=counts,
            )


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
    "Progress",
    "QueueStatus",
    "Requester",
    "validate_options",
]
