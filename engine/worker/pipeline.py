"""The work behind the Celery tasks, as plain functions: claim, generate, render, finish.

Every stage re-reads the request row, claims it with a compare-and-set on its status, and writes
its files under keys derived from the request id, so a redelivered task neither duplicates rows
nor files. The SQL row is the source of truth.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from engine.errors import MotifError, ServiceUnavailable, public_message
from engine.music.catalog import PROGRAM_NAMES
from engine.music.midi import load_seed, split_result, to_midi_bytes
from engine.music.notes import Piece
from engine.service.options import ComposeOptions
from engine.service.tunes import store_tune
from engine.settings import Settings, get_settings
from engine.store.artifacts import store_for
from engine.store.db import dml, session_scope
from engine.store.records import (
    OPEN_STATES,
    Artifact,
    ArtifactKind,
    Request,
    RequestKind,
    RequestStatus,
    TuneSource,
    Worker,
    alive_since,
    utcnow,
)
from engine.worker.lifecycle import process_alive

if TYPE_CHECKING:  # the audio side is imported when a render runs
    from engine.audio.encode import EncodedAudio
    from engine.audio.score import EngravedResult

log = logging.getLogger(__name__)

MUSICXML_MIME = "application/vnd.recordare.musicxml+xml"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RowNotVisible(Exception):
    """The request row is not committed yet (the message raced the commit): retry shortly."""


# --- claiming -------------------------------------------------------------------------------


def beat_interval_s(settings: Settings) -> float:
    return min(2.0, settings.stale_after_s / 4)


def claimant_gone(
    session: Session, claimant: str | None, heartbeat_at: datetime | None, settings: Settings
) -> bool:
    """Whether a generating row's claimant can no longer finish it: its process on this
    machine is dead, its machine has no live worker presence, or it stopped beating."""
    now = utcnow()
    if claimant is None or heartbeat_at is None:
        return True
    lease_s = min(settings.claim_lease_s, settings.stale_after_s)
    if heartbeat_at < now - timedelta(seconds=lease_s):
        return True  # a working claimant beats every couple of seconds
    host, _, pid = claimant.rpartition(":")
    if claimant == worker_name():
        # This process runs one task at a time: a claim of its own that no longer beats is
        # left over from an interrupted attempt (a database outage).
        return heartbeat_at < now - timedelta(seconds=3 * beat_interval_s(settings))
    if host == socket.gethostname():
        return not (pid.isdigit() and process_alive(int(pid)))
    since = alive_since(settings.worker_heartbeat_s, now)
    live = session.scalars(select(Worker.hostname).where(Worker.last_seen >= since))
    return not any(name.rpartition("@")[2] == host for name in live)


def _claim_values() -> dict[str, object]:
    now = utcnow()
    return {
        "status": RequestStatus.GENERATING,
        # the first start stays recorded: queue_wait_s is the wait before it, not after a fault
        "generating_at": func.coalesce(Request.generating_at, now),
        "heartbeat_at": now,
        "attempts": Request.attempts + 1,
        "worker": worker_name(),
    }


def claim_for_generation(request_id: int, settings: Settings) -> bool:
    """queued → generating, for exactly one worker (compare-and-set). A row whose claimant is
    gone (see `claimant_gone`) is taken over the same way, so a redelivered message finishes
    the job instead of waiting for the reaper. False when a live worker has it."""
    with session_scope(settings.sqlalchemy_url) as session:
        result = dml(
            session,
            update(Request)
            .where(Request.id == request_id, Request.status == RequestStatus.QUEUED)
            .values(**_claim_values()),
        )
        if result.rowcount:
            return True
        row = session.get(Request, request_id)
        if row is None:
            raise RowNotVisible(request_id)
        if row.status is not RequestStatus.GENERATING:
            return False
        if not claimant_gone(session, row.worker, row.heartbeat_at, settings):
            return False
        if row.attempts >= settings.max_attempts:
            return False  # the reaper fails it with its message
        previous = row.worker
        result = dml(
            session,
            update(Request)
            .where(
                Request.id == request_id,
                Request.status == RequestStatus.GENERATING,
                Request.worker.is_(None) if previous is None else Request.worker == previous,
            )
            .values(**_claim_values()),
        )
        if result.rowcount:
            log.warning("request %s taken over from %s (gone)", request_id, previous)
        return bool(result.rowcount)


def fair_order(
    waiting: list[tuple[int, int | None]], taken: list[int | None] | None = None
) -> list[int]:
    """The order in which a batch takes waiting requests `(id, guild_id)`: round-robin over
    guilds, the guild with the fewest requests in the batch first (ties: the oldest request),
    oldest first within a guild. One guild's flood cannot fill every batch."""
    queues: dict[int | None, deque[int]] = {}
    for rid, guild in sorted(waiting):
        queues.setdefault(guild, deque()).append(rid)
    counts = Counter(taken or [])
    order = []
    while queues:
        guild = min(queues, key=lambda g: (counts[g], queues[g][0]))
        order.append(queues[guild].popleft())
        counts[guild] += 1
        if not queues[guild]:
            del queues[guild]
    return order


def drain_queued(settings: Settings, limit: int, exclude: set[int]) -> list[int]:
    """Claim up to `limit` more queued requests to decode in the same batch, fairly between
    guilds (`fair_order`): the oldest `limit` of each guild are the candidates."""
    if limit <= 0:
        return []
    with session_scope(settings.sqlalchemy_url) as session:
        rank = (
            func.row_number().over(partition_by=Request.guild_id, order_by=Request.id).label("rank")
        )
        waiting = (
            select(Request.id, Request.guild_id, rank)
            .where(Request.status == RequestStatus.QUEUED, Request.id.not_in(exclude))
            .subquery()
        )
        candidates = [
            (rid, guild)
            for rid, guild in session.execute(
                select(waiting.c.id, waiting.c.guild_id).where(waiting.c.rank <= limit)
            )
        ]
        taken = list(session.scalars(select(Request.guild_id).where(Request.id.in_(exclude))))
    claimed: list[int] = []
    for rid in fair_order(candidates, taken):
        if len(claimed) >= limit:
            break
        if claim_for_generation(rid, settings):
            claimed.append(rid)
    return claimed


@contextmanager
def heartbeat(request_ids: list[int], settings: Settings) -> Iterator[None]:
    """Keep `heartbeat_at` fresh while a batch runs, so the reaper leaves live work alone."""
    stop = threading.Event()
    every_s = beat_interval_s(settings)

    def beat() -> None:
        while not stop.wait(every_s):
            try:
                with session_scope(settings.sqlalchemy_url) as session:
                    session.execute(
                        update(Request)
                        .where(Request.id.in_(list(request_ids)))
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:  # noqa: BLE001 - a missed beat is not fatal
                log.warning("heartbeat failed for %s", request_ids, exc_info=True)

    thread = threading.Thread(target=beat, name="motif-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


# --- generation -----------------------------------------------------------------------------


@dataclass
class Job:
    request_id: int
    options: ComposeOptions
    seed: Piece | None
    seed_midi: bytes | None


def load_job(request_id: int, settings: Settings) -> Job:

    store = store_for(settings.artifact_root)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        assert req is not None
        options = ComposeOptions.from_params(req.params)
        tune = req.seed_tune
        midi_key, name = (tune.midi_key, tune.name) if tune else (None, "")
    seed_midi = store.get(midi_key) if midi_key else None
    seed = (
        load_seed(seed_midi, name=name, from_bar=options.from_bar)
        if seed_midi is not None
        else None
    )
    if seed is not None and options.tempo:
        seed = replace(seed, tempo_bpm=options.tempo)
    return Job(request_id=request_id, options=options, seed=seed, seed_midi=seed_midi)


def _load_jobs(request_ids: list[int], settings: Settings) -> list[Job]:
    """The claimed requests' jobs; a request whose seed cannot be read fails alone."""
    jobs: list[Job] = []
    for rid in request_ids:
        try:
            jobs.append(load_job(rid, settings))
        except ServiceUnavailable:
            raise  # the task retries once the database is back
        except MotifError as exc:
            fail(rid, settings, public_message(exc), exc.detail)
        except Exception as exc:  # noqa: BLE001 - one bad row must not sink the batch
            log.exception("could not load request %s", rid)
            fail(rid, settings, "Something went wrong reading your seed.", repr(exc))
    return jobs


def _generation_timings(req: Request, elapsed: float, batch_size: int, notes: int) -> dict:
    """The request's timings with this generation's added: the decode, the queue wait, and
    the time lost to faults when it took more than one attempt."""
    timings = dict(req.timings or {})
    timings["generate_s"] = round(elapsed, 3)
    timings["batch_size"] = batch_size
    timings["notes"] = notes
    if req.generating_at is not None:
        # generating_at is the first start: the time spent waiting in the queue
        timings["queue_wait_s"] = round((req.generating_at - req.created_at).total_seconds(), 3)
        if req.attempts > 1:  # the time lost to faults (a dead worker, an outage)
            timings["recovery_s"] = round(
                (utcnow() - req.generating_at).total_seconds() - elapsed, 3
            )
        timings["attempts"] = req.attempts
    return timings


def _as_asked(job: Job, cont: Piece) -> tuple[Piece | None, Piece]:
    """The seed and continuation with the instrument (and tempo) the request asked for."""
    program = job.options.instrument
    seed = replace(job.seed, program=program) if job.seed is not None else None
    cont = replace(cont, program=program)
    if job.options.tempo:
        cont = replace(cont, tempo_bpm=job.options.tempo)
    return seed, cont


def _title(request_id: int, kind: RequestKind, options: ComposeOptions, version: str | None) -> str:
    """The piano roll's title line."""
    return (
        f"Motif #{request_id} · {kind.value} · {options.bars} bars · "
        f"{options.style or 'any style'} · T={options.temperature:g} · "
        f"{PROGRAM_NAMES.get(options.instrument, options.instrument)} · model {version}"
    )


def generate_batch(request_ids: list[int], settings: Settings) -> list[int]:
    """Continue every claimed request's seed in one batched decode. Returns the ids finished."""
    from engine.model.checkpoint import device_label
    from engine.model.generate import GenerationRequest, continue_batch
    from engine.worker.loaded import get_model

    jobs = _load_jobs(request_ids, settings)
    if not jobs:
        return []
    version, model = get_model(settings)
    device = device_label(next(model.model.parameters()).device)  # cpu, cuda:0 <name>
    started = time.perf_counter()
    gen_requests = [
        GenerationRequest(
            seed=job.seed,
            bars=job.options.bars,
            style=job.options.style,
            temperature=job.options.temperature,
            top_p=job.options.top_p,
            rng_seed=job.options.rng_seed,
            program=job.options.instrument,
            tempo_bpm=job.options.tempo,
        )
        for job in jobs
    ]
    continuations = continue_batch(model, gen_requests)
    elapsed = time.perf_counter() - started
    store = store_for(settings.artifact_root)
    finished: list[int] = []
    for job, cont in zip(jobs, continuations, strict=True):
        seed, cont = _as_asked(job, cont)
        midi = to_midi_bytes(seed, cont)  # no seed: one track, named continuation
        key = f"requests/{job.request_id}/motif-{job.request_id}.mid"
        store.put(key, midi)
        with session_scope(settings.sqlalchemy_url) as session:
            req = session.get(Request, job.request_id)
            if req is None or req.status is not RequestStatus.GENERATING:
                continue  # cancelled or reaped meanwhile: drop this result
            full = Piece((seed.notes if seed else ()) + cont.notes, tempo_bpm=cont.tempo_bpm)
            tune = store_tune(
                session,
                store,
                midi,
                full,
                source=TuneSource.GENERATION,
                owner_id=req.user_id,
                name=f"motif-{req.id}",
            )
            _upsert_artifact(session, req.id, ArtifactKind.MIDI, key, midi, "audio/midi")
            req.result_tune_id = tune.id
            req.model_version = version
            req.device = device
            req.status = RequestStatus.RENDERING
            req.rendering_at = utcnow()
            req.heartbeat_at = utcnow()
            req.timings = _generation_timings(req, elapsed, len(jobs), len(cont.notes))
        finished.append(job.request_id)
    return finished


def _upsert_artifact(
    session, request_id: int, kind: ArtifactKind, key: str, data: bytes, content_type: str
) -> None:
    existing = session.scalar(
        select(Artifact).where(Artifact.request_id == request_id, Artifact.kind == kind)
    )
    if existing is None:
        session.add(
            Artifact(
                request_id=request_id, kind=kind, key=key, size=len(data), content_type=content_type
            )
        )
    else:
        existing.key, existing.size, existing.content_type = key, len(data), content_type


# --- rendering ------------------------------------------------------------------------------


def _render_files(
    midi: bytes, settings: Settings, request_id: int, options: ComposeOptions, title: str
) -> tuple[EncodedAudio, bytes, EngravedResult, float]:
    """The audio, the piano roll and the engraved score of a result (and the engraving's
    seconds)."""
    from engine.audio.encode import render_audio
    from engine.audio.pianoroll import piano_roll_png
    from engine.audio.score import engrave_result

    audio = render_audio(midi, settings, program=options.instrument)
    seed, cont = split_result(midi)
    png = piano_roll_png(seed, cont, title=title)
    engraving_started = time.perf_counter()
    score = engrave_result(midi, seed, cont, title=f"Motif #{request_id}")
    return audio, png, score, time.perf_counter() - engraving_started


def render_request(request_id: int, settings: Settings) -> bool:
    """rendering → done: audio + piano roll. False when the request is not waiting for it."""
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        if req is None:
            raise RowNotVisible(request_id)
        if req.status is not RequestStatus.RENDERING:
            return False
        midi_art = next((a for a in req.artifacts if a.kind is ArtifactKind.MIDI), None)
        options = ComposeOptions.from_params(req.params)
        title = _title(request_id, req.kind, options, req.model_version)
        req.heartbeat_at = utcnow()
    if midi_art is None:
        fail(request_id, settings, "The generated music went missing.", "no MIDI artifact")
        return False
    store = store_for(settings.artifact_root)
    midi = store.get(midi_art.key)
    started = time.perf_counter()
    with heartbeat([request_id], settings):
        audio, png, score, engrave_s = _render_files(midi, settings, request_id, options, title)
    elapsed = time.perf_counter() - started
    audio_key = f"requests/{request_id}/motif-{request_id}.{audio.fmt}"
    image_key = f"requests/{request_id}/motif-{request_id}.png"
    store.put(audio_key, audio.data)
    store.put(image_key, png)
    xml_key = f"requests/{request_id}/motif-{request_id}.musicxml"
    score_key = f"requests/{request_id}/motif-{request_id}-score.png"
    store.put(xml_key, score.musicxml)
    if score.png is not None:
        store.put(score_key, score.png)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        if req is None or req.status is not RequestStatus.RENDERING:
            return False
        _upsert_artifact(session, request_id, ArtifactKind.AUDIO, audio_key, audio.data, audio.mime)
        _upsert_artifact(session, request_id, ArtifactKind.IMAGE, image_key, png, "image/png")
        _upsert_artifact(
            session, request_id, ArtifactKind.MUSICXML, xml_key, score.musicxml, MUSICXML_MIME
        )
        if score.png is not None:
            _upsert_artifact(
                session, request_id, ArtifactKind.SCORE, score_key, score.png, "image/png"
            )
        now = utcnow()
        timings = dict(req.timings or {})
        timings["render_s"] = round(elapsed, 3)
        timings["engrave_s"] = round(engrave_s, 3)
        timings["audio_s"] = round(audio.seconds, 2)
        timings["total_s"] = round((now - req.created_at).total_seconds(), 3)
        req.timings = timings
        notes = dict(req.notes or {})
        if audio.shortened:
            notes["shortened"] = True
        req.notes = notes
        req.status = RequestStatus.DONE
        req.finished_at = now
    return True


def fail(request_id: int, settings: Settings, user_message: str, detail: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(
            update(Request)
            .where(
                Request.id == request_id,
                Request.status.in_(OPEN_STATES),
            )
            .values(
                status=RequestStatus.FAILED,
                finished_at=utcnow(),
                error_user=user_message,
                error_detail=detail[:4000],
            )
        )


# --- the two stages, as the tasks call them -------------------------------------------------


def run_generation(request_id: int, settings: Settings | None = None) -> list[int]:
    """Claim this request, drain more waiting ones into the batch, generate. Returns ids done."""
    settings = settings or get_settings()
    if not claim_for_generation(request_id, settings):
        return []
    batch = [request_id]
    try:
        # The heartbeat covers the batching wait too: the list grows as requests are drained.
        with heartbeat(batch, settings):
            if settings.batch_wait_ms:
                time.sleep(settings.batch_wait_ms / 1000)
            batch.extend(drain_queued(settings, settings.batch_size - 1, {request_id}))
            return generate_batch(batch, settings)
    except ServiceUnavailable:
        # The database went away: nothing is failed or acknowledged as failed; the task is
        # retried with back-off, and the rows claimed here are taken over (claimant_gone).
        log.warning("database unreachable while generating %s; will retry", batch)
        raise
    except MotifError as exc:
        for rid in batch:
            fail(rid, settings, public_message(exc), exc.detail)
        return []
    except Exception as exc:
        log.exception("generation failed for %s", batch)
        for rid in batch:
            fail(rid, settings, f"Generation failed (request #{rid}); sorry!", repr(exc))
        return []


def run_render(request_id: int, settings: Settings | None = None) -> bool:
    settings = settings or get_settings()
    try:
        return render_request(request_id, settings)
    except ServiceUnavailable:
        log.warning("database unreachable while rendering %s; will retry", request_id)
        raise
    except MotifError as exc:
        fail(request_id, settings, public_message(exc), exc.detail)
        return False
    except RowNotVisible:
        raise
    except Exception as exc:
        log.exception("rendering failed for %s", request_id)
        fail(request_id, settings, f"Rendering failed (request #{request_id}); sorry!", repr(exc))
        return False


def process_request(request_id: int, settings: Settings | None = None) -> RequestStatus:
    """Both stages in this process (tests, tools): the same functions the workers run."""
    settings = settings or get_settings()
    done = run_generation(request_id, settings)
    for rid in done:
        run_render(rid, settings)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        assert req is not None
        return req.status


__all__ = ["RequestKind", "process_request", "run_generation", "run_render"]
