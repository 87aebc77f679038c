"""The generate stage: load the claimed requests, continue their seeds in one batch, keep the
results (the tune, the MIDI artifact) and mark each ready to render (the task sends it on)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from sqlalchemy import update

from engine.errors import MotifError, ServiceUnavailable, public_message
from engine.music.metre import aligned_for_generation
from engine.music.notes import Piece
from engine.music.request import ComposeOptions
from engine.music.result_midi import to_midi_bytes
from engine.service.request_seeds import kept_seed
from engine.service.tunes import store_tune
from engine.settings import Settings
from engine.store.artifacts import ArtifactStore, result_stem, store_for
from engine.store.db import dml, session_scope
from engine.store.records import (
    ArtifactKind,
    Request,
    RequestStatus,
    TuneSource,
    utcnow,
)
from engine.worker.claims import upsert_artifact
from engine.worker.fencing import Beats, Claim, fail_claimed

log = logging.getLogger(__name__)


@dataclass
class Job:
    request_id: int
    options: ComposeOptions
    seed: Piece | None  # as submitted: parsed, cut and checked once (engine.service.request_seeds)


def load_job(request_id: int, settings: Settings) -> Job:
    store = store_for(settings.artifact_root)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        assert req is not None
        options = ComposeOptions.from_params(req.params)
        tune = req.seed_tune
        kept = (tune.midi_key, tune.name, tune.content_hash) if tune else None
    return Job(request_id, options, kept_seed(store, request_id, kept, options))


def _load_jobs(claims: list[Claim], settings: Settings) -> list[tuple[Claim, Job]]:
    """The claimed requests' jobs; a request whose seed cannot be read fails alone."""
    jobs: list[tuple[Claim, Job]] = []
    for claim in claims:
        rid = claim.request_id
        try:
            jobs.append((claim, load_job(rid, settings)))
        except ServiceUnavailable:
            raise  # the task retries once the database is back
        except MotifError as exc:
            fail_claimed(claim, settings, public_message(exc), exc.detail)
        except Exception as exc:  # noqa: BLE001 - one bad row must not sink the batch
            log.exception("could not load request %s", rid)
            fail_claimed(claim, settings, "Something went wrong reading your seed.", repr(exc))
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


def generate_batch(claims: list[Claim], settings: Settings, beats: Beats) -> list[int]:
    """Continue every claimed request's seed in one batched decode. Returns the ids finished.

    Each result is kept only while its claim holds (engine.worker.fencing): its MIDI goes under
    the attempt's key, and the row moves on to rendering in one transaction conditional on the
    claim; a claim taken over meanwhile writes nothing (its file is removed)."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.checkpoint import device_label
    from engine.model.generate.continuation import GenerationRequest, continue_batch
    from engine.worker.loaded import get_model

    jobs = _load_jobs(claims, settings)
    if not jobs:
        return []
    version, model = get_model(settings)
    device = device_label(next(model.model.parameters()).device)  # cpu, cuda:0 <name>
    started = time.perf_counter()
    # a seed whose metre changes is given to the model with the last metre's bar lines on its
    # grid; its continuation comes back to the seed's own timeline
    aligned = [aligned_for_generation(job.seed) if job.seed else (None, 0.0) for _, job in jobs]
    gen_requests = [
        GenerationRequest(seed, job.options)
        for (_, job), (seed, _) in zip(jobs, aligned, strict=True)
    ]
    continuations = continue_batch(model, gen_requests)
    elapsed = time.perf_counter() - started
    store = store_for(settings.artifact_root)
    finished: list[int] = []
    for (claim, job), cont, (_, shift) in zip(jobs, continuations, aligned, strict=True):
        cont = cont.shifted(-shift)
        if claim.request_id in beats.lost:
            log.warning("request %s was taken over: its result is dropped", claim.request_id)
            continue
        seed = job.seed  # in the instrument and tempo asked, as the continuation is
        midi = to_midi_bytes(seed, cont)  # no seed: one track, named continuation
        key = claim.key(f"{result_stem(job.request_id)}.mid")
        store.put(key, midi)
        full = Piece((seed.notes if seed else ()) + cont.notes, tempo_bpm=cont.tempo_bpm)
        timing = (elapsed, len(jobs), len(cont.notes))
        if _keep(claim, settings, store, (midi, full, key), version, device, timing):
            finished.append(job.request_id)
        else:
            # cancelled, or taken over meanwhile: this attempt's file is nobody's
            store.delete(key)
            beats.lost.add(claim.request_id)
    return finished


def _keep(
    claim: Claim,
    settings: Settings,
    store: ArtifactStore,
    result: tuple[bytes, Piece, str],
    version: str,
    device: str,
    timing: tuple[float, int, int],
) -> bool:
    """generating → rendering with the result, if the claim still holds (one transaction: the
    conditional UPDATE comes first, so nothing else is written when it is refused). The row is
    handed over with no claimant: the render stage claims it (engine.worker.claims)."""
    midi, full, key = result
    with session_scope(settings.sqlalchemy_url) as session:
        now = utcnow()
        moved = dml(
            session,
            update(Request)
            .where(*claim.holds())
            .values(
                status=RequestStatus.RENDERING,
                rendering_at=now,
                heartbeat_at=now,
                worker=None,  # worker_queues stays: who generated it (reaper.stage_busy)
                model_version=version,
                device=device,
            ),
        ).rowcount
        if not moved:
            return False
        req = session.get(Request, claim.request_id, populate_existing=True)
        assert req is not None
        tune = store_tune(
            session,
            store,
            midi,
            full,
            source=TuneSource.GENERATION,
            owner_id=req.user_id,
            name=result_stem(req.id),
        )
        upsert_artifact(session, req.id, ArtifactKind.MIDI, key, midi, "audio/midi")
        req.result_tune_id = tune.id
        req.timings = _generation_timings(req, *timing)
    return True
