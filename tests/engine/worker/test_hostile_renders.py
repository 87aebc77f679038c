"""Renders a legal seed cannot exhaust: metres beyond a sixteenth-note beat are written in 4/4
(and the reply says so), a 1/64 seed engraves, and render and generate tasks have time limits
that fail their request with a clear message."""

from __future__ import annotations

import io

import pretty_midi
import pytest
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded

from engine.music.midi import load_seed, seed_notices
from engine.music.musicxml import score_xml
from engine.music.notes import Note, Piece, notated_metre
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from tests.conftest import make_settings


def midi_in(numerator: int, denominator: int) -> bytes:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(numerator, denominator, 0))
    inst = pretty_midi.Instrument(program=0)
    for i in range(8):
        inst.notes.append(
            pretty_midi.Note(velocity=90, pitch=60 + i, start=i * 0.25, end=i * 0.25 + 0.2)
        )
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def test_notated_metres():
    assert notated_metre((6, 8)) == (6, 8) and notated_metre((1, 16)) == (1, 16)
    assert notated_metre((3, 32)) == (4, 4) and notated_metre((1, 64)) == (4, 4)
    assert notated_metre((0, 4)) == (4, 4) and notated_metre((33, 4)) == (4, 4)


def test_a_1_64_midi_seed_is_read_in_4_4_and_the_reply_says_so():
    piece = load_seed(midi_in(1, 64))
    assert piece.time_signature == (4, 4)
    assert "1/64" in seed_notices(piece)["metre_clamped"]
    assert "metre_clamped" not in seed_notices(load_seed(midi_in(3, 16)))


def test_a_1_64_piece_engraves():
    notes = tuple(Note(start=i * 0.25, duration=0.25, pitch=60 + i, velocity=80) for i in range(8))
    seed = Piece(notes=notes, time_signature=(1, 64))
    xml = score_xml(seed, Piece(notes=()), key=None)  # was: ZeroDivisionError
    assert "<beats>4</beats><beat-type>4</beat-type>" in xml.replace("\n", "")


def test_an_abc_seed_in_3_32_says_it_was_read_in_4_4():
    pytest.importorskip("music21")
    from engine.music.notation import load_notation_seed

    seed = load_notation_seed(b"X:1\nM:3/32\nL:1/32\nK:C\nCDE|FGA|\n", "tiny.abc")
    assert seed.piece.time_signature == (4, 4)
    assert any("3/32" in r for r in seed.remarks)


@pytest.fixture
def queued_request(tmp_path):  # type: ignore[no-untyped-def]
    settings = make_settings(tmp_path)
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda _: None)
    return service, settings, service.compose(Requester(discord_id=3), validate_options(bars=2))


def _hold(settings, rid, status, worker):  # type: ignore[no-untyped-def]
    """The row as a stage holds it: `status`, claimed by `worker` (None: handed over)."""
    from sqlalchemy import update

    from engine.store.db import session_scope
    from engine.store.records import Request, utcnow

    with session_scope(settings.sqlalchemy_url) as s:
        s.execute(
            update(Request)
            .where(Request.id == rid)
            .values(status=status, worker=worker, heartbeat_at=utcnow(), attempts=1)
        )


def test_a_render_past_its_soft_limit_fails_with_a_clear_message(queued_request, monkeypatch):
    from engine.store.records import RequestStatus
    from engine.worker import pipeline, rendering

    service, settings, rid = queued_request
    _hold(settings, rid, RequestStatus.RENDERING, None)  # generated, its render not claimed

    def stuck(claim, settings):  # type: ignore[no-untyped-def]
        raise SoftTimeLimitExceeded()  # what Celery raises in the task at its soft limit

    monkeypatch.setattr(rendering, "_render_claimed", stuck)
    assert pipeline.run_render(rid, settings) is False
    progress = service.progress(rid)
    assert progress.status.value == "failed"
    assert progress.error_user.startswith(f"Rendering request #{rid} took longer than Motif allows")


def test_a_generation_past_its_soft_limit_fails_its_claim_with_a_clear_message(
    queued_request, monkeypatch
):
    from engine.worker import pipeline

    service, settings, rid = queued_request

    def stuck(claims, settings, beats):  # type: ignore[no-untyped-def]
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(pipeline, "generate_batch", stuck)
    assert pipeline.run_generation(rid, settings) == []
    progress = service.progress(rid)
    assert progress.status.value == "failed"
    assert progress.error_user.startswith(f"Generating request #{rid} took longer")


def test_a_task_killed_at_its_hard_limit_fails_its_request(queued_request, monkeypatch):
    from engine.worker import tasks

    service, settings, rid = queued_request
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    assert tasks.render.soft_time_limit == settings.render_time_limit_s
    assert tasks.render.time_limit > tasks.render.soft_time_limit
    assert tasks.generate.soft_time_limit == settings.generate_time_limit_s
    # Celery calls on_failure in the worker when it kills a task at the hard limit
    tasks.generate.on_failure(TimeLimitExceeded(615), "task-id", (rid,), {}, None)
    progress = service.progress(rid)
    assert progress.status.value == "failed" and "took longer" in progress.error_user


def test_the_hard_limit_fails_the_killed_childs_claim_but_never_a_live_claimant(
    queued_request, monkeypatch
):
    """on_failure runs in the pool's parent, before it kills the child: the row held by one of
    its children is failed; a row a live process elsewhere holds (a takeover) is left alone."""
    import os
    import socket
    import subprocess

    from engine.store.records import RequestStatus
    from engine.worker import tasks

    service, settings, rid = queued_request
    monkeypatch.setattr(tasks, "get_settings", lambda: settings)
    host = socket.gethostname()
    _hold(settings, rid, RequestStatus.RENDERING, f"{host}:{os.getppid()}")  # alive, not ours
    tasks.render.on_failure(TimeLimitExceeded(105), "task-id", (rid,), {}, None)
    assert service.progress(rid).status.value == "rendering"
    child = subprocess.Popen(["sleep", "30"])  # a pool child of this process, still running
    try:
        _hold(settings, rid, RequestStatus.RENDERING, f"{host}:{child.pid}")
        tasks.render.on_failure(TimeLimitExceeded(105), "task-id", (rid,), {}, None)
    finally:
        child.kill()
        child.wait()
    progress = service.progress(rid)
    assert progress.status.value == "failed" and "took longer" in progress.error_user
