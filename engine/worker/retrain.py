"""Retraining on tunes the community shared: collect with consent, train, gate, activate.

`run_training` is what the `train` queue's task calls. A candidate becomes active only if its NLL
on the base corpus's held-out set is not worse than the active model's beyond a tolerance, its
continuations do not collapse and it keeps its seeds about as well (seed information gain,
figures that recur, repeated-pitch runs; engine.model.fidelity); otherwise it is kept, rejected, with
the reason.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from engine.errors import MotifError
from engine.model.corpus.load import load_corpus
from engine.music.notes import Piece
from engine.service.admin import (
    activate_model,
)
from engine.settings import Settings, get_settings
from engine.store.artifacts import store_for, training_key
from engine.store.db import session_scope
from engine.store.models import (
    checkpoint_key,
    ensure_default_model,
    register_checkpoint,
    run_version,
)
from engine.store.records import ModelStatus, ModelVersion, RunStatus, TrainingRun, utcnow
from engine.worker.collect import (
    CollectedTune,
    collected_tunes,
    dataset_hash,
    piece_weights,
    split_collected,
)
from engine.worker.gate import compare, gate, model_figures, nll_per_note
from engine.worker.training_run import RunRecorder, claim_run

if TYPE_CHECKING:
    import torch

    from engine.model.train.config import TrainResult

log = logging.getLogger(__name__)


def run_training(run_id: int, settings: Settings | None = None) -> str:
    """Train, evaluate, gate. Returns the run's final status."""
    settings = settings or get_settings()
    if not claim_run(settings, run_id):
        return "skipped"
    rec = RunRecorder(settings, run_id)
    started = time.perf_counter()
    try:
        status = _train_and_gate(settings, run_id, rec)
    except MotifError as exc:
        rec.log(f"failed: {exc.user_message}")
        rec.status(
            RunStatus.FAILED,
            error=exc.user_message,
            finished_at=utcnow(),
            duration_s=time.perf_counter() - started,
        )
        return RunStatus.FAILED.value
    except Exception as exc:
        log.exception("training run %s failed", run_id)
        rec.log(f"failed: {exc!r}")
        rec.status(
            RunStatus.FAILED,
            error=f"training failed: {exc!r}"[:2000],
            finished_at=utcnow(),
            duration_s=time.perf_counter() - started,
        )
        return RunStatus.FAILED.value
    with session_scope(settings.sqlalchemy_url) as session:
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id == run_id)
            .values(duration_s=round(time.perf_counter() - started, 2), finished_at=utcnow())
        )
    prune_checkpoints(settings)
    return status


def _train_and_gate(settings: Settings, run_id: int, rec: RunRecorder) -> str:
    """Train a candidate on the corpus and the collected tunes, measure it against the active
    model, keep it (a candidate or rejected), and activate it if it passed the gate."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.checkpoint import pick_device

    with session_scope(settings.sqlalchemy_url) as session:
        run = session.get(TrainingRun, run_id)
        assert run is not None
        params = dict(run.params)
    active_version = ensure_default_model(settings)
    data = _gather(settings, params)
    device = pick_device(settings.device)
    rec.status(
        RunStatus.RUNNING,
        dataset_hash=data.digest,
        dataset_size=len(data.pieces),
        device=device.type,
    )
    rec.log(
        f"dataset: {len(data.base_train)} corpus pieces + {len(data.coll_train)} collected tunes "
        f"({len(data.coll_held)} held out), collected share {data.share:.2f}, device {device.type}"
    )
    version = run_version(run_id, utcnow())
    with tempfile.TemporaryDirectory(prefix="motif-train-") as tmp:
        out = Path(tmp) / f"{version}.pt"
        result = _train_candidate(settings, params, data, active_version, out, version, rec)
        if result.stopped == "stopped":
            rec.log("cancelled by an admin; no candidate was kept")
            rec.status(RunStatus.CANCELLED)
            return RunStatus.CANCELLED.value
        rec.status(RunStatus.EVALUATING)
        rec.log(
            f"trained {result.steps} steps in {result.wall_s:.0f} s "
            f"({result.tokens_per_s:.0f} notes/s); evaluating"
        )
        metrics = _measure(settings, out, active_version, data, result, device)
        reason = gate(metrics, settings.gate_nll_tolerance)
        parent = None if params.get("from_scratch") else active_version
        _keep(settings, run_id, out, version, result, metrics, parent, reason)
    if reason:
        rec.log(f"candidate {version} rejected: {reason}")
        rec.status(RunStatus.REJECTED, metrics=metrics, error=reason)
        return RunStatus.REJECTED.value

    activate_model(version, settings)
    rec.log(f"candidate {version} passed the gate and is now active")
    rec.status(RunStatus.DONE, metrics=metrics)
    return RunStatus.DONE.value


@dataclass(frozen=True)
class _Dataset:
    """A retraining run's data: the corpus's splits and the collected tunes (some held out)."""

    base_train: list[Piece]
    base_val: list[Piece]
    base_test: list[Piece]
    coll_train: list[CollectedTune]
    coll_held: list[CollectedTune]
    share: float  # the collected tunes' share of the training samples
    digest: str  # `dataset_hash`

    @property
    def pieces(self) -> list[Piece]:
        return self.base_train + [t.piece for t in self.coll_train]


def _gather(settings: Settings, params: dict[str, Any]) -> _Dataset:

    corpus = load_corpus(settings.corpus_path)
    base_train = corpus.pieces("train")
    base_val = corpus.pieces("validation") or base_train[:20]
    base_test = corpus.pieces("test") or base_val
    tunes = collected_tunes(settings)
    coll_train, coll_held = split_collected(tunes)
    share = float(params.get("collected_share", 0.5))
    digest = dataset_hash(corpus.content_hash, tunes, share)
    return _Dataset(base_train, base_val, base_test, coll_train, coll_held, share, digest)


def _train_candidate(
    settings: Settings,
    params: dict[str, Any],
    data: _Dataset,
    active_version: str,
    out: Path,
    version: str,
    rec: RunRecorder,
) -> TrainResult:
    """Train into `out`: fine-tuned from the active model unless the run asks for a fresh one."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.train.config import TrainConfig
    from engine.model.train.train import train

    init_from = None
    if not params.get("from_scratch"):
        init_from = out.with_name("active.pt")
        init_from.write_bytes(
            store_for(settings.artifact_root).get(checkpoint_key(settings, active_version))
        )
    model_kwargs = dict(params.get("model_config") or {})
    cfg = TrainConfig(
        out=out,
        corpus_path=None,
        pieces=data.pieces,
        piece_weights=piece_weights(
            data.base_train, [t.piece for t in data.coll_train], data.share
        ),
        val_pieces=data.base_val,
        test_pieces=data.base_test,
        init_from=init_from,
        epochs=int(params.get("epochs", 2)),
        max_minutes=float(params.get("max_minutes", 30.0)),
        device=settings.device,
        progress=False,
        version=version,
        on_progress=rec.progress,
        should_stop=rec.should_stop,
        **model_kwargs,
    )
    return train(cfg)


def _measure(
    settings: Settings,
    out: Path,
    active_version: str,
    data: _Dataset,
    result: TrainResult,
    device: torch.device,
) -> dict[str, Any]:
    """What the gate compares: NLLs on the corpus's test split and the held-out collected tunes,
    collapse and seed fidelity, for the candidate and the active model."""
    # deferred: a render-only (cpu) worker loads no model nor torch (signals._warm_up)
    from engine.model.checkpoint import load_checkpoint
    from engine.worker.loaded import load_version

    candidate = load_checkpoint(out, device=device)
    active = load_version(settings, active_version)
    held = [t.piece for t in data.coll_held]
    base_test = data.base_test
    return {
        **compare(model_figures(candidate, base_test), model_figures(active, base_test)),
        "candidate_collected_nll": (nll_per_note(candidate, held) if held else None),
        "active_collected_nll": nll_per_note(active, held) if held else None,
        "steps": result.steps,
        "tokens_per_s": round(result.tokens_per_s, 1),
        "best_val_nll": result.best_val_nll,
        "tolerance": settings.gate_nll_tolerance,
    }


def _keep(
    settings: Settings,
    run_id: int,
    out: Path,
    version: str,
    result: TrainResult,
    metrics: dict[str, Any],
    parent: str | None,
    reason: str | None,
) -> None:
    """Register the candidate (rejected, with the reason, when it failed the gate), its loss
    curve stored beside it (its key into `metrics`)."""
    store = store_for(settings.artifact_root)
    if result.loss_png and Path(result.loss_png).exists():
        key = training_key(run_id, "loss.png")
        store.put(key, Path(result.loss_png).read_bytes())
        metrics["loss_curve_key"] = key
    status = ModelStatus.REJECTED if reason else ModelStatus.CANDIDATE
    register_checkpoint(
        settings,
        out.read_bytes(),
        version,
        status=status,
        metrics={**metrics, "val_nll": result.best_val_nll},
        parent_version=parent,
        training_run_id=run_id,
        reject_reason=reason,
    )


def prune_checkpoints(settings: Settings) -> list[str]:
    """Delete checkpoint files of the oldest inactive versions beyond `keep_checkpoints`."""
    with session_scope(settings.sqlalchemy_url) as session:
        rows = list(
            session.scalars(
                select(ModelVersion)
                .where(ModelVersion.active.is_(False))
                .order_by(ModelVersion.created_at.desc(), ModelVersion.id.desc())
            )
        )
        doomed = [m for m in rows[settings.keep_checkpoints :] if m.checkpoint_key]
        keys = [(m.version, m.checkpoint_key) for m in doomed]
    store = store_for(settings.artifact_root)
    pruned = []
    for version, key in keys:
        if store.exists(key):
            store.delete(key)
            pruned.append(version)
    return pruned
