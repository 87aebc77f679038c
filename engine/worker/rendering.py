"""The render stage: a request's MIDI into audio, the piano roll and the engraved score, stored
under keys derived from the request id."""

from __future__ import annotations

import logging
import time

from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import update

from engine.audio.encode import EncodedAudio
from engine.audio.media import ResultMedia, render_media
from engine.audio.score import EngravedResult
from engine.errors import MotifError, ServiceUnavailable, public_message
from engine.music.catalog import PROGRAM_NAMES
from engine.music.request import ComposeOptions
from engine.settings import Settings
from engine.store.artifacts import result_stem, store_for
from engine.store.db import dml, session_scope
from engine.store.records import (
    ArtifactKind,
    Request,
    RequestKind,
    RequestStatus,
    utcnow,
)
from engine.worker.claims import beat_interval_s, claim_for_render, upsert_artifact
from engine.worker.fencing import Beats, Claim, ClaimLost, fail_claimed, heartbeat

log = logging.getLogger(__name__)

MUSICXML_MIME = "application/vnd.recordare.musicxml+xml"


def _render_files(
    midi: bytes,
    settings: Settings,
    options: ComposeOptions,
    title: str,
    claim: Claim,
    beats: Beats,
) -> ResultMedia:
    """The audio, the piano roll and the engraved score of a result (engine.audio.media).
    Between the steps it beats when a beat is due (the engraving's long calls keep the GIL from
    the heartbeat thread) and stops with ClaimLost once the claim is taken over."""
    return render_media(
        midi,
        settings,
        program=options.instrument,
        roll_title=title,
        score_title=f"Motif #{claim.request_id}",
        step=beats.tick,
        between=lambda: beats.tick(claim),
    )


def render_request(request_id: int, settings: Settings) -> bool:
    """rendering → done: audio, piano roll and score, by the render's claimant only (fenced,
    engine.worker.fencing). False when the request is not waiting for it, a live claimant
    renders it, or this claim was taken over meanwhile (nothing is written then)."""
    claim = claim_for_render(request_id, settings)
    if claim is None:
        return False
    try:
        return _render_claimed(claim, settings)
    except ServiceUnavailable:
        raise  # the task retries once the database is back
    except ClaimLost:
        log.warning("render of %s taken over by another claimant: stopped", request_id)
        return False
    except SoftTimeLimitExceeded as exc:
        log.warning("rendering %s ran past its time limit", request_id)
        fail_claimed(claim, settings, took_too_long("Rendering", request_id), repr(exc))
        return False
    except MotifError as exc:
        fail_claimed(claim, settings, public_message(exc), exc.detail)
        return False
    except Exception as exc:
        log.exception("rendering failed for %s", request_id)
        message = f"Rendering failed (request #{request_id}); sorry!"
        fail_claimed(claim, settings, message, repr(exc))
        return False


def took_too_long(stage: str, request_id: int) -> str:
    return (
        f"{stage} request #{request_id} took longer than Motif allows, so it was stopped. "
        "Try fewer bars or a shorter seed."
    )


def _render_claimed(claim: Claim, settings: Settings) -> bool:
    request_id = claim.request_id
    stem = result_stem(request_id)  # the files' names, which users see
    with heartbeat([claim], settings, beat_interval_s(settings)) as beats:
        with session_scope(settings.sqlalchemy_url) as session:
            req = session.get(Request, request_id)
            assert req is not None
            midi_art = next((a for a in req.artifacts if a.kind is ArtifactKind.MIDI), None)
            options = ComposeOptions.from_params(req.params)
            title = _title(request_id, req.kind, options, req.model_version)
        if midi_art is None:
            fail_claimed(claim, settings, "The generated music went missing.", "no MIDI artifact")
            return False
        store = store_for(settings.artifact_root)
        midi = store.get(midi_art.key)
        started = time.perf_counter()
        media = _render_files(midi, settings, options, title, claim, beats)
        elapsed = time.perf_counter() - started
        audio, png, score = media.audio, media.piano_roll, media.score
        files = [
            (ArtifactKind.AUDIO, f"{stem}.{audio.fmt}", audio.data, audio.mime),
            (ArtifactKind.IMAGE, f"{stem}.png", png, "image/png"),
            (ArtifactKind.MUSICXML, f"{stem}.musicxml", score.musicxml, MUSICXML_MIME),
            *_score_files(request_id, score),
        ]
        # every file under this attempt's key: the fenced commit below makes them the request's
        keys = [claim.key(name) for _, name, _, _ in files]
        for key, (_, _, data, _) in zip(keys, files, strict=True):
            store.put(key, data)
        timings = {
            "render_s": round(elapsed, 3),
            "engrave_s": round(media.engrave_s, 3),
            "audio_render_s": round(media.audio_s, 3),
        }
        notes: dict[str, object] = {"shortened": True} if audio.shortened else {}
        if score.bars_shown < score.bars_total:
            notes["score_bars"] = [score.bars_shown, score.bars_total]
        if _finish(claim, settings, files, keys, audio, timings, notes):
            return True
        for key in keys:  # taken over meanwhile: this attempt's files are nobody's
            store.delete(key)
        raise ClaimLost(request_id)


def _finish(
    claim: Claim,
    settings: Settings,
    files: list[tuple[ArtifactKind, str, bytes, str]],
    keys: list[str],
    audio: EncodedAudio,
    timings: dict[str, float],
    new_notes: dict[str, object],
) -> bool:
    """rendering → done with the files, if the claim still holds (one transaction, the
    conditional UPDATE first: a refused claim writes nothing)."""
    with session_scope(settings.sqlalchemy_url) as session:
        now = utcnow()
        done = dml(
            session,
            update(Request)
            .where(*claim.holds())
            .values(status=RequestStatus.DONE, finished_at=now),
        ).rowcount
        if not done:
            return False
        req = session.get(Request, claim.request_id, populate_existing=True)
        assert req is not None
        for key, (kind, _, data, mime) in zip(keys, files, strict=True):
            upsert_artifact(session, req.id, kind, key, data, mime)
        all_timings = dict(req.timings or {})
        all_timings.update(timings)
        all_timings["audio_s"] = round(audio.seconds, 2)
        all_timings["total_s"] = round((now - req.created_at).total_seconds(), 3)
        req.timings = all_timings
        req.notes = {**(req.notes or {}), **new_notes}
    return True


SCORE_PAGE_KINDS = (ArtifactKind.SCORE, ArtifactKind.SCORE_2)  # the pages chat shows, in order


def _score_files(
    request_id: int, score: EngravedResult
) -> list[tuple[ArtifactKind, str, bytes, str]]:
    """(kind, file name, bytes, MIME type) of the score's pages for chat and its PDF: none when
    engraving failed. They go under the attempt's key like the other files."""
    stem = result_stem(request_id)
    files = [
        (kind, f"{stem}-score{'' if i == 0 else f'-{i + 1}'}.png", page, "image/png")
        for i, (page, kind) in enumerate(zip(score.pages, SCORE_PAGE_KINDS, strict=False))
    ]
    if score.pdf is not None:
        files.append((ArtifactKind.PDF, f"{stem}.pdf", score.pdf, "application/pdf"))
    return files


def _title(request_id: int, kind: RequestKind, options: ComposeOptions, version: str | None) -> str:
    """The piano roll's title line."""
    return (
        f"Motif #{request_id} · {kind.value} · {options.bars} bars · "
        f"{options.style or 'any style'} · T={options.temperature:g} · "
        f"{PROGRAM_NAMES.get(options.instrument, options.instrument)} · model {version}"
    )
