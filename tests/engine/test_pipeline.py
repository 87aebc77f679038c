"""The generate and render steps of `engine.worker.pipeline`, called directly on a real embedded Motif."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image
from symusic import Score

from engine.audio.pianoroll import CONTINUATION_COLOUR, SEED_COLOUR
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
