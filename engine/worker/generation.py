"""The generate stage: load the claimed requests, continue their seeds in one batch, keep the
results (the tune, the MIDI artifact) and mark each ready to render (the task sends it on)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

from engine.errors import MotifError, ServiceUnavailable, public_message
from engine.music.endings import reopened
from engine.music.midi import load_seed
from engine.music.notes import Piece
from engine.music.result_midi import to_midi_bytes
from engine.service.options import ComposeOptions
from engine.service.tunes import store_tune
from engine.settings import Settings
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import (
    ArtifactKind,
    Request,
    RequestStatus,
    TuneSource,
    utcnow,
)
from engine.worker.claims import fail, upsert_artifact

log = logging.getLogger(__name__)


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
    if seed is not None and options.reopen_seed:
        seed = reopened(seed)
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


def generate_batch(request_ids: list[int], settings: Settings) -> list[int]:
    """Continue every claimed request's seed in one batched decode. Returns the ids finished."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.checkpoint import device_label
    from engine.model.generate.continuation import GenerationRequest, continue_batch
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
            ending="open" if job.options.ending == "open" else "close",
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
            upsert_artifact(session, req.id, ArtifactKind.MIDI, key, midi, "audio/midi")
            req.result_tune_id = tune.id
            req.model_version = version
            req.device = device
            req.status = RequestStatus.RENDERING
            req.rendering_at = utcnow()
            req.heartbeat_at = utcnow()
            req.timings = _generation_timings(req, elapsed, len(jobs), len(cont.notes))
        finished.append(job.request_id)
    return finished
