"""The generate and render steps of `engine.worker.pipeline`, called directly on a real embedded Motif."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from symusic import Score

from engine.audio.pianoroll import CONTINUATION_COLOUR, SEED_COLOUR
from engine.cli.compose import _write_result
from engine.music.result_midi import split_result
from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.artifacts import store_for
from engine.store.records import ArtifactKind, RequestStatus
from engine.worker.pipeline import run_generation, run_render
from tests.conftest import example_seed_bytes, make_settings


def _settings(tmp_path: Path, model: Path) -> Settings:
    s = make_settings(tmp_path, default_model_path=model)
    db.upgrade(s.sqlalchemy_url)
    return s


def _pixels_near(png: bytes, colour: str, tol: int = 40) -> int:
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(rgb - target).max(axis=2) < tol).sum())


def _compose(settings: Settings, seed: bytes | None) -> tuple[JobService, int]:
    service = JobService(settings, dispatch=lambda _rid: None)
    options = validate_options(bars=2, style="folk", rng_seed=5, settings=settings)
    rid = service.compose(Requester(origin="cli", name="test"), options, seed, "seed.mid")
    assert run_generation(rid, settings) == [rid]
    assert run_render(rid, settings)
    return service, rid


def _artifacts(service: JobService, rid: int) -> dict[ArtifactKind, bytes]:
    prog = service.progress(rid)
    assert prog.status is RequestStatus.DONE, prog.error_user
    return {a.kind: service.artifact_bytes(a) for a in prog.artifacts}


def test_a_result_without_seed_is_all_continuation(tmp_path, tiny_model_path):
    settings = _settings(tmp_path, tiny_model_path)
    service, rid = _compose(settings, None)
    files = _artifacts(service, rid)
    midi = files[ArtifactKind.MIDI]
    assert [t.name for t in Score.from_midi(midi).tracks] == ["continuation"]
    seed, cont = split_result(midi)
    assert seed is None and len(cont.notes) > 0
    png = files[ArtifactKind.IMAGE]
    assert _pixels_near(png, SEED_COLOUR) == 0  # nothing drawn as seed, no "seed ends" legend
    assert _pixels_near(png, CONTINUATION_COLOUR) > 100


def test_a_result_with_seed_keeps_both_tracks(tmp_path, tiny_model_path):
    settings = _settings(tmp_path, tiny_model_path)
    service, rid = _compose(settings, example_seed_bytes())
    files = _artifacts(service, rid)
    midi = files[ArtifactKind.MIDI]
    assert [t.name for t in Score.from_midi(midi).tracks] == ["seed", "continuation"]
    seed, cont = split_result(midi)
    assert seed is not None and len(seed.notes) > 0 and len(cont.notes) > 0
    assert _pixels_near(files[ArtifactKind.IMAGE], SEED_COLOUR) > 100
    # under the first attempt's own key (engine.worker.fencing), named for the user
    assert store_for(settings.artifact_root).exists(f"requests/{rid}/attempt-1/motif-{rid}.mid")


def test_the_result_plays_seed_and_continuation_in_the_instrument_and_tempo_asked(
    tmp_path, tiny_model_path
):
    # applied once each: to the seed kept at submission, and by the decoder to the continuation
    settings = _settings(tmp_path, tiny_model_path)
    service = JobService(settings, dispatch=lambda _rid: None)
    asked = validate_options(bars=2, instrument="flute", tempo=90, rng_seed=5, settings=settings)
    rid = service.compose(Requester(origin="cli", name="t"), asked, example_seed_bytes(), "s.mid")
    assert run_generation(rid, settings) == [rid]
    midi = store_for(settings.artifact_root).get(f"requests/{rid}/attempt-1/motif-{rid}.mid")
    seed, cont = split_result(midi)
    assert seed is not None and {seed.program, cont.program} == {73}
    assert seed.tempo_bpm == pytest.approx(90.0) and cont.tempo_bpm == pytest.approx(90.0)


def test_a_long_result_brings_two_score_pages_a_pdf_and_says_which_bars_it_shows(
    tmp_path, tiny_model_path, capsys
):
    """The render stage stores the score's first pages for chat, the PDF of all of them, and
    notes the bars the pages show when there are more; all under the attempt's own key,
    promoted with the others by the fenced commit."""
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, max_bars=128)
    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings, dispatch=lambda _rid: None)
    options = validate_options(bars=128, style="folk", rng_seed=5, settings=settings)
    rid = service.compose(Requester(origin="cli", name="test"), options, None, "")
    assert run_generation(rid, settings) == [rid]
    assert run_render(rid, settings)
    files = _artifacts(service, rid)
    assert files[ArtifactKind.PDF][:5] == b"%PDF-"
    for page in (ArtifactKind.SCORE, ArtifactKind.SCORE_2):
        assert Image.open(io.BytesIO(files[page])).width == 1400
    names = {a.kind: a.filename for a in service.progress(rid).artifacts}
    assert names["score-2"] == f"motif-{rid}-score-2.png" and names["pdf"] == f"motif-{rid}.pdf"
    store = store_for(settings.artifact_root)
    for name in names.values():
        assert store.exists(f"requests/{rid}/attempt-1/{name}")
    shown, total = service.progress(rid).notes["score_bars"]
    assert 0 < shown < total and total >= 128
    assert files[ArtifactKind.PDF].count(b"/Type /Page ") > 2
    # `motif compose` writes them all and says which bars the pictures show
    _write_result(service, service.progress(rid), tmp_path / "out", time.perf_counter())
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert f"motif-{rid}.pdf" in written and f"motif-{rid}-score-2.png" in written
    assert f"the score pictures show bars 1–{shown} of {total}" in capsys.readouterr().out
