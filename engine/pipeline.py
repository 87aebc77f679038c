"""The work behind the Celery tasks, as plain functions: claim, generate, render, finish.

Every stage re-reads the request row, claims it with a compare-and-set on its status, and writes
its files under keys derived from the request id, so a redelivered task neither duplicates rows
nor files. The SQL row is the source of truth.
"""

from __future__ import annotations

import io
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from sqlalchemy import select, update

from engine.artifacts import store_for
from engine.db import session_scope
from engine.errors import MotifError
from engine.jobs import ComposeOptions, content_hash
from engine.music import Note, Piece
from engine.records import (
    Artifact,
    ArtifactKind,
    Request,
    RequestKind,
    RequestStatus,
    Tune,
    TuneSource,
    utcnow,
)
from engine.settings import Settings, get_settings

log = logging.getLogger(__name__)

WORKER_NAME = f"{socket.gethostname()}:{os.getpid()}"


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class RowNotVisible(Exception):
    """The request row is not committed yet (the message raced the commit): retry shortly."""


# --- claiming -------------------------------------------------------------------------------


def claim_for_generation(request_id: int, settings: Settings) -> bool:
    """queued → generating, for exactly one worker. False when someone else has it."""
    with session_scope(settings.sqlalchemy_url) as session:
        result = session.execute(
            update(Request)
            .where(Request.id == request_id, Request.status == RequestStatus.QUEUED)
            .values(
                status=RequestStatus.GENERATING,
                generating_at=utcnow(),
                heartbeat_at=utcnow(),
                attempts=Request.attempts + 1,
                worker=worker_name(),
            )
        )
        if result.rowcount:
            return True
        if session.get(Request, request_id) is None:
            raise RowNotVisible(request_id)
        return False


def drain_queued(settings: Settings, limit: int, exclude: set[int]) -> list[int]:
    """Claim up to `limit` more queued requests (oldest first) to decode in the same batch."""
    if limit <= 0:
        return []
    with session_scope(settings.sqlalchemy_url) as session:
        candidates = list(
            session.scalars(
                select(Request.id)
                .where(Request.status == RequestStatus.QUEUED)
                .order_by(Request.id)
                .limit(limit + len(exclude))
            )
        )
    claimed: list[int] = []
    for rid in candidates:
        if rid in exclude or len(claimed) >= limit:
            continue
        if claim_for_generation(rid, settings):
            claimed.append(rid)
    return claimed


@contextmanager
def heartbeat(request_ids: list[int], settings: Settings) -> Iterator[None]:
    """Keep `heartbeat_at` fresh while a batch runs, so the reaper leaves live work alone."""
    stop = threading.Event()
    every_s = min(2.0, settings.stale_after_s / 4)

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
    from engine.midi_io import load_seed

    store = store_for(settings.artifact_root)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        assert req is not None
        options = ComposeOptions.from_params(req.params)
        tune = session.get(Tune, req.seed_tune_id) if req.seed_tune_id else None
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


def generate_batch(request_ids: list[int], settings: Settings) -> list[int]:
    """Continue every claimed request's seed in one batched decode. Returns the ids finished."""
    from engine.generate import GenerationRequest, continue_batch
    from engine.midi_io import to_midi_bytes
    from engine.model_registry import get_model

    jobs: list[Job] = []
    for rid in request_ids:
        try:
            jobs.append(load_job(rid, settings))
        except MotifError as exc:
            fail(rid, settings, exc.user_message, exc.detail)
        except Exception as exc:  # noqa: BLE001 - one bad row must not sink the batch
            log.exception("could not load request %s", rid)
            fail(rid, settings, "Something went wrong reading your seed.", repr(exc))
    if not jobs:
        return []
    version, model = get_model(settings)
    device = str(next(model.model.parameters()).device)
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
        program = job.options.instrument
        seed = job.seed
        if seed is not None:
            seed = replace(seed, program=program)
        cont = replace(cont, program=program)
        if job.options.tempo:
            cont = replace(cont, tempo_bpm=job.options.tempo)
        midi = to_midi_bytes(seed, cont) if seed is not None else to_midi_bytes(cont)
        key = f"requests/{job.request_id}/motif-{job.request_id}.mid"
        store.put(key, midi)
        with session_scope(settings.sqlalchemy_url) as session:
            req = session.get(Request, job.request_id)
            if req is None or req.status is not RequestStatus.GENERATING:
                continue  # cancelled or reaped meanwhile: drop this result
            digest = content_hash(midi)
            tune = session.scalar(select(Tune).where(Tune.content_hash == digest))
            if tune is None:
                tune_key = f"tunes/{digest[:2]}/{digest}.mid"
                store.put(tune_key, midi)
                full_notes = (seed.notes if seed else ()) + cont.notes
                tune = Tune(
                    content_hash=digest,
                    source=TuneSource.GENERATION,
                    owner_id=req.user_id,
                    name=f"motif-{req.id}",
                    midi_key=tune_key,
                    note_count=len(full_notes),
                    duration_s=round(
                        max((n.end for n in full_notes), default=0.0) * 60.0 / cont.tempo_bpm, 3
                    ),
                )
                session.add(tune)
                session.flush()
            _upsert_artifact(session, req.id, ArtifactKind.MIDI, key, midi, "audio/midi")
            req.result_tune_id = tune.id
            req.model_version = version
            req.device = device
            req.status = RequestStatus.RENDERING
            req.rendering_at = utcnow()
            req.heartbeat_at = utcnow()
            timings = dict(req.timings or {})
            timings["generate_s"] = round(elapsed, 3)
            timings["batch_size"] = len(jobs)
            timings["notes"] = len(cont.notes)
            if req.generating_at is not None:
                timings["queue_wait_s"] = round(
                    (req.generating_at - req.created_at).total_seconds(), 3
                )
            req.timings = timings
        finished.append(job.request_id)
    return finished


def _upsert_artifact(
    session, request_id: int, kind: ArtifactKind, key: str, data: bytes, content_type: str
) -> None:  # type: ignore[no-untyped-def]
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


def split_result(midi: bytes) -> tuple[Piece | None, Piece]:
    """The seed and the continuation back from a result MIDI (tracks named by to_midi_bytes)."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi))
    tempo = float(pm.get_tempo_changes()[1][0]) if len(pm.get_tempo_changes()[1]) else 120.0
    ts = pm.time_signature_changes[0] if pm.time_signature_changes else None
    signature = (ts.numerator, ts.denominator) if ts else (4, 4)
    spb = 60.0 / tempo

    def piece(inst) -> Piece:  # type: ignore[no-untyped-def]
        notes = tuple(
            sorted(
                (
                    Note(n.start / spb, (n.end - n.start) / spb, n.pitch, n.velocity)
                    for n in inst.notes
                ),
                key=lambda n: (n.start, n.pitch),
            )
        )
        return Piece(notes, tempo_bpm=tempo, time_signature=signature, program=inst.program)

    seed = next((piece(i) for i in pm.instruments if i.name == "seed"), None)
    conts = [i for i in pm.instruments if i.name != "seed"]
    cont = piece(conts[0]) if conts else Piece((), tempo_bpm=tempo, time_signature=signature)
    return seed, cont


def render_request(request_id: int, settings: Settings) -> bool:
    """rendering → done: audio + piano roll. False when the request is not waiting for it."""
    from engine.audio import render_audio
    from engine.catalog import PROGRAM_NAMES
    from engine.pianoroll import piano_roll_png

    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        if req is None:
            raise RowNotVisible(request_id)
        if req.status is not RequestStatus.RENDERING:
            return False
        midi_art = next((a for a in req.artifacts if a.kind is ArtifactKind.MIDI), None)
        options = ComposeOptions.from_params(req.params)
        kind, version = req.kind, req.model_version
        req.heartbeat_at = utcnow()
    if midi_art is None:
        fail(request_id, settings, "The generated music went missing.", "no MIDI artifact")
        return False
    store = store_for(settings.artifact_root)
    midi = store.get(midi_art.key)
    started = time.perf_counter()
    with heartbeat([request_id], settings):
        audio = render_audio(midi, settings, program=options.instrument)
        seed, cont = split_result(midi)
        title = (
            f"Motif #{request_id} · {kind.value} · {options.bars} bars · "
            f"{options.style or 'any style'} · T={options.temperature:g} · "
            f"{PROGRAM_NAMES.get(options.instrument, options.instrument)} · model {version}"
        )
        png = piano_roll_png(seed, cont, title=title)
    elapsed = time.perf_counter() - started
    audio_key = f"requests/{request_id}/motif-{request_id}.{audio.fmt}"
    image_key = f"requests/{request_id}/motif-{request_id}.png"
    store.put(audio_key, audio.data)
    store.put(image_key, png)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        if req is None or req.status is not RequestStatus.RENDERING:
            return False
        _upsert_artifact(session, request_id, ArtifactKind.AUDIO, audio_key, audio.data, audio.mime)
        _upsert_artifact(session, request_id, ArtifactKind.IMAGE, image_key, png, "image/png")
        timings = dict(req.timings or {})
        timings["render_s"] = round(elapsed, 3)
        timings["audio_s"] = round(audio.seconds, 2)
        req.timings = timings
        notes = dict(req.notes or {})
        if audio.shortened:
            notes["shortened"] = True
        req.notes = notes
        now = utcnow()
        timings["total_s"] = round((now - req.created_at).total_seconds(), 3)
        req.timings = dict(timings)
        req.status = RequestStatus.DONE
        req.finished_at = now
    return True


def fail(request_id: int, settings: Settings, user_message: str, detail: str) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(
            update(Request)
            .where(
                Request.id == request_id,
                Request.status.in_(
                    (RequestStatus.QUEUED, RequestStatus.GENERATING, RequestStatus.RENDERING)
                ),
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
    except MotifError as exc:
        for rid in batch:
            fail(rid, settings, exc.user_message, exc.detail)
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
    except MotifError as exc:
        fail(request_id, settings, exc.user_message, exc.detail)
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


def new_rng_seed() -> int:
    return random.randint(0, 2**31 - 1)


__all__ = ["RequestKind", "process_request", "run_generation", "run_render"]
