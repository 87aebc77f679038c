"""The render stage: a request's MIDI into audio, the piano roll and the engraved score, stored
under keys derived from the request id."""

from __future__ import annotations

import time

from engine.audio.encode import EncodedAudio, render_audio
from engine.audio.pianoroll import piano_roll_png
from engine.audio.score import EngravedResult, engrave_result
from engine.music.catalog import PROGRAM_NAMES
from engine.music.result_midi import split_result
from engine.service.options import ComposeOptions
from engine.settings import Settings
from engine.store.artifacts import store_for
from engine.store.db import session_scope
from engine.store.records import (
    ArtifactKind,
    Request,
    RequestKind,
    RequestStatus,
    utcnow,
)
from engine.worker.claims import RowNotVisible, fail, heartbeat, upsert_artifact

MUSICXML_MIME = "application/vnd.recordare.musicxml+xml"


def _render_files(
    midi: bytes, settings: Settings, request_id: int, options: ComposeOptions, title: str
) -> tuple[EncodedAudio, bytes, EngravedResult, float]:
    """The audio, the piano roll and the engraved score of a result (and the engraving's
    seconds)."""

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
    store.put(xml_key, score.musicxml)
    score_files = _score_files(request_id, score)
    for key, data, _kind, _mime in score_files:
        store.put(key, data)
    with session_scope(settings.sqlalchemy_url) as session:
        req = session.get(Request, request_id)
        if req is None or req.status is not RequestStatus.RENDERING:
            return False
        upsert_artifact(session, request_id, ArtifactKind.AUDIO, audio_key, audio.data, audio.mime)
        upsert_artifact(session, request_id, ArtifactKind.IMAGE, image_key, png, "image/png")
        upsert_artifact(
            session, request_id, ArtifactKind.MUSICXML, xml_key, score.musicxml, MUSICXML_MIME
        )
        for key, data, kind, mime in score_files:
            upsert_artifact(session, request_id, kind, key, data, mime)
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
        if score.bars_shown < score.bars_total:
            notes["score_bars"] = [score.bars_shown, score.bars_total]
        req.notes = notes
        req.status = RequestStatus.DONE
        req.finished_at = now
    return True


SCORE_PAGE_KINDS = (ArtifactKind.SCORE, ArtifactKind.SCORE_2)  # the pages chat shows, in order


def _score_files(
    request_id: int, score: EngravedResult
) -> list[tuple[str, bytes, ArtifactKind, str]]:
    """(key, bytes, kind, MIME type) of the score's pages for chat and its PDF: none when
    engraving failed."""
    stem = f"requests/{request_id}/motif-{request_id}"
    files = [
        (f"{stem}-score{'' if i == 0 else f'-{i + 1}'}.png", page, kind, "image/png")
        for i, (page, kind) in enumerate(zip(score.pages, SCORE_PAGE_KINDS, strict=False))
    ]
    if score.pdf is not None:
        files.append((f"{stem}.pdf", score.pdf, ArtifactKind.PDF, "application/pdf"))
    return files


def _title(request_id: int, kind: RequestKind, options: ComposeOptions, version: str | None) -> str:
    """The piano roll's title line."""
    return (
        f"Motif #{request_id} · {kind.value} · {options.bars} bars · "
        f"{options.style or 'any style'} · T={options.temperature:g} · "
        f"{PROGRAM_NAMES.get(options.instrument, options.instrument)} · model {version}"
    )
