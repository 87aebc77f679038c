"""Retraining with consent, the gate, activation and rollback — real training on CPU."""

from __future__ import annotations

import io
import math

import pretty_midi
import pytest
from sqlalchemy import select

from engine.service import admin
from engine.service.admin import RetrainOptions, request_retrain, run_info
from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.models import ensure_default_model
from engine.store.records import ModelStatus, ModelVersion, RunStatus, TrainingRun, Tune
from engine.worker.collect import collected_tunes
from engine.worker.gate import gate, standard_error
from engine.worker.retrain import run_training
from tests.conftest import make_settings, synthetic_pieces, wait_finished

pytestmark = pytest.mark.slow

TINY = {
    "d_embed": 32,
    "hidden": 48,
    "layers": 1,
    "seed_max": 16,
    "target_len": 16,
    "batch_size": 8,
    "max_steps": 20,
    "warmup_steps": 2,
    "eval_windows": 16,
    "threads": 1,
}


def midi_of(piece) -> bytes:
    from engine.music.result_midi import to_midi_bytes

    return to_midi_bytes(piece)


def repeated_note_midi(i: int) -> bytes:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    inst = pretty_midi.Instrument(0)
    for k in range(64):
        inst.notes.append(pretty_midi.Note(90, 60, k * 0.25 + i * 0.001, k * 0.25 + 0.2))
    pm.instruments.append(inst)
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


@pytest.fixture
def retrain_settings(tmp_path, tiny_corpus_model_path, tiny_corpus_path):
    s = make_settings(
        tmp_path,
        default_model_path=tiny_corpus_model_path,
        corpus_path=tiny_corpus_path,
        gate_nll_tolerance=0.5,
        user_max_concurrent=50,
        user_rate_per_min=50,
    )
    db.upgrade(s.sqlalchemy_url)
    ensure_default_model(s)
    return s


def share_tunes(settings, midis: list[bytes], user: int = 1) -> list[int]:
    service = JobService(settings, dispatch=lambda _: None)
    who = Requester(discord_id=user)
    ids = []
    for k, m in enumerate(midis):
        rid = service.compose(who, validate_options(), m, f"shared-{k}.mid")
        service.share(rid, who)
        ids.append(rid)
    return ids


def test_only_consented_unwithdrawn_tunes_are_collected(retrain_settings):
    s = retrain_settings
    service = JobService(s, dispatch=lambda _: None)
    pieces = synthetic_pieces(6, seed=3)
    ann, bob = Requester(discord_id=1), Requester(discord_id=2)
    shared = service.compose(ann, validate_options(), midi_of(pieces[0]), "a.mid")
    service.share(shared, ann)
    service.compose(ann, validate_options(), midi_of(pieces[1]), "private.mid")  # no consent
    withdrawn = service.compose(bob, validate_options(), midi_of(pieces[2]), "b.mid")
    service.share(withdrawn, bob)
    service.forget(bob)
    names = {t.piece.name for t in collected_tunes(s)}
    assert names == {"a.mid"}
    with session_scope(s.sqlalchemy_url) as session:
        assert session.scalar(select(Tune).where(Tune.name == "private.mid")).consent is False


def test_retrain_activates_a_good_candidate_and_rollback_restores(retrain_settings):
    s = retrain_settings
    share_tunes(s, [midi_of(p) for p in synthetic_pieces(5, seed=9)])
    before = admin.active_version(s)
    run_id = request_retrain(
        RetrainOptions(epochs=1, model_config=TINY), settings=s, dispatch=False
    )
    assert run_training(run_id, s) == "done", run_info(run_id, s)
    info = run_info(run_id, s)
    assert info.status == "done" and info.candidate
    assert info.metrics["collapse_rate"] == 0.0
    for who in ("candidate_fidelity", "active_fidelity"):  # the gate compared seed fidelity
        assert set(info.metrics[who]) >= {"pattern_reuse", "long_run_share", "gain_content"}
    assert info.metrics["candidate_base_nll"] <= info.metrics["active_base_nll"] + 0.5
    assert admin.active_version(s) == info.candidate != before
    with session_scope(s.sqlalchemy_url) as session:
        from engine.store.records import TrainingRun

        run = session.get(TrainingRun, run_id)
        assert run.dataset_hash and run.dataset_size > 0 and run.duration_s > 0
        assert "passed the gate" in run.log and run.progress.get("step")
    assert admin.rollback(s) == before
    assert admin.active_version(s) == before


def test_a_broken_candidate_is_rejected_by_the_gate(retrain_settings):
    s = retrain_settings
    share_tunes(s, [repeated_note_midi(i) for i in range(6)])
    before = admin.active_version(s)
    config = dict(TINY, max_steps=150)
    run_id = request_retrain(
        RetrainOptions(epochs=50, from_scratch=True, collected_share=1.0, model_config=config),
        settings=s,
        dispatch=False,
    )
    assert run_training(run_id, s) == "rejected", run_info(run_id, s).metrics
    info = run_info(run_id, s)
    assert "worse than the active model" in info.error or "collapsed" in info.error
    assert admin.active_version(s) == before
    with session_scope(s.sqlalchemy_url) as session:
        row = session.scalar(select(ModelVersion).where(ModelVersion.version == info.candidate))
        assert row.status is ModelStatus.REJECTED and row.reject_reason and not row.active
    with pytest.raises(Exception, match="rejected"):
        admin.activate_model(info.candidate, s)


def test_one_run_at_a_time_and_cancel(retrain_settings):
    s = retrain_settings
    run_id = request_retrain(RetrainOptions(model_config=TINY), settings=s, dispatch=False)
    with pytest.raises(Exception, match="already queued"):
        request_retrain(RetrainOptions(), settings=s, dispatch=False)
    assert admin.cancel_run(run_id, s) == "cancelled"
    assert run_info(run_id, s).status == "cancelled"
    assert run_training(run_id, s) == "skipped"  # a cancelled run's message does nothing


def test_retrain_through_a_real_worker_then_compose_uses_the_new_version(
    retrain_settings, worker_factory
):
    s = retrain_settings
    share_tunes(s, [midi_of(p) for p in synthetic_pieces(4, seed=5)])
    worker_factory(s).start()
    run_id = request_retrain(RetrainOptions(epochs=1, model_config=TINY), settings=s)
    import time

    deadline = time.monotonic() + 240
    while run_info(run_id, s).status not in ("done", "rejected", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    info = run_info(run_id, s)
    assert info.status == "done", info
    service = JobService(s)
    rid = service.compose(Requester(discord_id=5), validate_options(bars=2), None)
    prog = wait_finished(service, rid)
    assert prog.model_version == info.candidate
    assert RunStatus.DONE.value == info.status


def test_motif_retrain_cancel_stops_the_run_a_real_worker_is_training(
    retrain_settings, worker_factory
):
    """`motif retrain --cancel N` while a real worker trains run N: the loop stops at its next
    step, the run ends cancelled, no candidate is kept and the active model stays."""
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT, settings_env

    s = retrain_settings
    before = admin.active_version(s)
    worker_factory(s, queues="train").start()
    long_run = dict(TINY, max_steps=100_000)
    run_id = request_retrain(
        RetrainOptions(epochs=100, max_minutes=10, model_config=long_run), settings=s
    )
    deadline = time.monotonic() + 120
    while "step" not in run_info(run_id, s).progress:  # training, past the data loading
        assert run_info(run_id, s).status in ("queued", "running"), run_info(run_id, s)
        assert time.monotonic() < deadline
        time.sleep(0.2)

    def motif(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=settings_env(s),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = motif("retrain", "--cancel", str(run_id))
    assert done.returncode == 0, done.stderr
    assert f"Training run #{run_id} stops at its next step" in done.stdout
    deadline = time.monotonic() + 60
    while run_info(run_id, s).status == "running":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    info = run_info(run_id, s)
    assert info.status == "cancelled" and info.candidate is None
    assert admin.active_version(s) == before
    again = motif("retrain", "--cancel", str(run_id))
    assert again.returncode == 1 and "nothing to cancel" in again.stdout


def test_cancel_run_is_a_compare_and_set(retrain_settings):
    s = retrain_settings
    run_id = request_retrain(RetrainOptions(model_config=TINY), settings=s, dispatch=False)
    from sqlalchemy import update

    from engine.store.records import TrainingRun

    with session_scope(s.sqlalchemy_url) as session:  # a worker claimed it meanwhile
        session.execute(
            update(TrainingRun).where(TrainingRun.id == run_id).values(status=RunStatus.EVALUATING)
        )
    assert admin.cancel_run(run_id, s) == ""  # too late: evaluating is never overwritten
    assert run_info(run_id, s).status == "evaluating"


def test_the_gate_rejects_a_candidate_that_forgets_its_seeds():
    active = {"gain_content": 0.13, "pattern_reuse": 0.07, "long_run_share": 0.5}
    base = {"candidate_base_nll": 3.10, "active_base_nll": 3.11, "collapse_rate": 0.0}
    assert (
        gate({**base, "candidate_fidelity": dict(active), "active_fidelity": active}, 0.1) is None
    )
    forgets = dict(active, gain_content=0.02)
    reason = gate({**base, "candidate_fidelity": forgets, "active_fidelity": active}, 0.1)
    assert reason and "forgets its seeds" in reason and "0.020" in reason
    less = dict(active, pattern_reuse=0.01)
    reason = gate({**base, "candidate_fidelity": less, "active_fidelity": active}, 0.1)
    assert reason and "develops its seeds less" in reason
    stuck = dict(active, long_run_share=0.7)
    reason = gate({**base, "candidate_fidelity": stuck, "active_fidelity": active}, 0.1)
    assert reason and "repeat a pitch 4+ times" in reason
    # a figure that could not be measured (NaN) or a model without figures does not block
    unknown = dict(active, gain_content=float("nan"))
    assert gate({**base, "candidate_fidelity": unknown, "active_fidelity": active}, 0.1) is None
    assert gate(base, 0.1) is None


def test_the_gate_refuses_on_sampled_shares_only_beyond_their_noise():
    base = {"candidate_base_nll": 3.10, "active_base_nll": 3.11, "collapse_rate": 0.0}
    active = {"gain_content": 0.8, "pattern_reuse": 0.60, "long_run_share": 0.20}
    sure = {"pattern_reuse_diff_se": 0.014, "long_run_share_diff_se": 0.014}  # margin 0.028

    def verdict(cand: dict) -> str | None:
        return gate({**base, "candidate_fidelity": cand, "active_fidelity": active}, 0.1)

    cand = {**active, **sure}
    assert verdict({**cand, "pattern_reuse": 0.53}) is None  # 0.07 less: within 0.078
    reason = verdict({**cand, "pattern_reuse": 0.52})
    assert reason and "develops its seeds less" in reason
    assert verdict({**cand, "long_run_share": 0.32}) is None  # 0.12 more: within 0.128
    reason = verdict({**cand, "long_run_share": 0.33})
    assert reason and "repeat a pitch 4+ times" in reason
    # a few pieces drawn a few times (a tiny test split) say little: a wide margin
    loose = {**active, "pattern_reuse_diff_se": 0.1, "long_run_share_diff_se": 0.1}
    assert verdict({**loose, "pattern_reuse": 0.35, "long_run_share": 0.5}) is None
    # no error (one pair, or figures kept before it was measured): the tolerance alone
    for unknown in ({}, {"pattern_reuse_diff_se": None}):
        reason = verdict({**active, **unknown, "pattern_reuse": 0.54})
        assert reason and "develops its seeds less" in reason


def test_standard_error_of_a_mean():
    assert standard_error([0.0, 1.0]) == pytest.approx(0.5)
    assert standard_error([0.2, 0.2, 0.2]) == pytest.approx(0.0, abs=1e-12)
    assert standard_error([1.0, float("nan"), 0.0]) == pytest.approx(0.5)
    assert math.isnan(standard_error([1.0])) and math.isnan(standard_error([]))


def test_the_gate_weighs_collapses_against_the_active_models():
    base = {"candidate_base_nll": 3.10, "active_base_nll": 3.11}
    # the active model collapses 1 time in 480: a candidate may too, and a little more
    assert gate({**base, "collapse_rate": 2 / 480, "active_collapse_rate": 1 / 480}, 0.1) is None
    reason = gate({**base, "collapse_rate": 4 / 480, "active_collapse_rate": 1 / 480}, 0.1)
    assert (
        reason
        and "0.8% of its continuations collapsed" in reason
        and "0.2% for the active" in reason
    )
    # figures kept before the active model was measured too: any collapse refuses, as then
    reason = gate({**base, "collapse_rate": 1 / 60}, 0.1)
    assert reason and "1.7% of its continuations collapsed" in reason and "active" not in reason
    assert gate({**base, "collapse_rate": 0.0}, 0.1) is None


def test_the_retrain_message_is_sent_after_its_row_commits(retrain_settings, monkeypatch):
    """A hung broker must not hold the database's write lock: when the message goes out, the
    run is committed and the database is free for other writers."""
    from engine.queue import dispatch

    s = retrain_settings
    seen: list[str] = []

    def send(run_id: int, settings) -> None:  # type: ignore[no-untyped-def]
        with session_scope(s.sqlalchemy_url, immediate=True) as other:  # another writer
            seen.append(other.scalar(select(TrainingRun.status).where(TrainingRun.id == run_id)))

    monkeypatch.setattr(dispatch, "dispatch_retrain", send)
    run_id = request_retrain(RetrainOptions(model_config=TINY), settings=s)
    assert seen == [RunStatus.QUEUED] and run_info(run_id, s).status == "queued"


def test_a_retrain_that_cannot_be_sent_does_not_block_the_next(retrain_settings, monkeypatch):
    from engine.errors import QueueUnreachable
    from engine.queue import dispatch

    def unreachable(run_id: int, settings) -> None:  # type: ignore[no-untyped-def]
        raise QueueUnreachable("The job queue is unreachable right now.")

    monkeypatch.setattr(dispatch, "dispatch_retrain", unreachable)
    with pytest.raises(QueueUnreachable):
        request_retrain(RetrainOptions(model_config=TINY), settings=retrain_settings)
    assert request_retrain(RetrainOptions(), settings=retrain_settings, dispatch=False)
