"""Retraining on tunes the community shared: collect with consent, train, gate, activate.

`run_training` is what the `train` queue's task calls. A candidate becomes active only if its NLL
on the base corpus's held-out set is not worse than the active model's beyond a tolerance, its
continuations do not collapse and it keeps its seeds about as well (seed information gain,
figures that recur, repeated-pitch runs; engine.model.fidelity); otherwise it is kept, rejected, with
the reason.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from engine.errors import BadMidi, MotifError
from engine.music.metrics import is_collapsed
from engine.music.midi import load_seed
from engine.music.notes import Piece
from engine.service.admin import (
    RetrainOptions,
    activate_model,
    cancel_run,
    cancel_run_text,
    request_retrain,
    run_info,
)
from engine.settings import Settings, get_settings
from engine.store.artifacts import store_for
from engine.store.db import dml, ensure_schema, session_scope
from engine.store.models import checkpoint_key, ensure_default_model, register_checkpoint
from engine.store.records import ModelStatus, ModelVersion, RunStatus, TrainingRun, Tune, utcnow
from engine.worker.pipeline import worker_name

if TYPE_CHECKING:
    import torch

    from engine.model.train import TrainResult

log = logging.getLogger(__name__)

GATE_SEEDS = 12  # continuations generated from held-out seeds for the collapse check
GATE_BARS = 4
# Seed fidelity (engine.model.fidelity): a candidate may not pass by forgetting its seeds. Measured on
# the same held-out seeds (4 bars, 8 continued) for the candidate and the active model.
FIDELITY_SEEDS = 24
FIDELITY_SEED_BARS, FIDELITY_BARS = 4, 8
GAIN_TOLERANCE = 0.05  # nats per note the content gain (key held fixed) may fall
REUSE_TOLERANCE = 0.05  # share of the seed's figures that recur: may fall this much
LONG_RUN_TOLERANCE = 0.10  # share of continuations with 4+ repeated pitches: may rise this much


@dataclass(frozen=True)
class CollectedTune:
    tune_id: int
    content_hash: str
    piece: Piece


def collected_tunes(settings: Settings) -> list[CollectedTune]:
    """Tunes whose owners consented and did not withdraw, validated with the seed limits."""
    with session_scope(settings.sqlalchemy_url) as session:
        rows = list(
            session.execute(
                select(Tune.id, Tune.content_hash, Tune.midi_key, Tune.name)
                .where(Tune.consent.is_(True), Tune.withdrawn_at.is_(None))
                .order_by(Tune.content_hash)
            )
        )
    store = store_for(settings.artifact_root)
    tunes = []
    for tune_id, digest, key, name in rows:
        try:
            piece = load_seed(store.get(key), name=name)
        except (BadMidi, OSError) as exc:
            log.warning("skipping collected tune %s: %s", tune_id, exc)
            continue
        tunes.append(CollectedTune(tune_id, digest, piece))
    return tunes


def split_collected(tunes: list[CollectedTune]) -> tuple[list[CollectedTune], list[CollectedTune]]:
    """A deterministic held-out slice (about 1 in 5, at least one when there are two or more)."""
    held = [t for t in tunes if int(t.content_hash[:8], 16) % 5 == 0]
    if not held and len(tunes) >= 2:
        held = [tunes[0]]
    train = [t for t in tunes if t not in held]
    return train, held


def dataset_hash(corpus_hash: str, tunes: list[CollectedTune], share: float) -> str:
    h = hashlib.sha256(corpus_hash.encode())
    for t in sorted(tunes, key=lambda t: t.content_hash):
        h.update(t.content_hash.encode())
    h.update(f"{share:.4f}".encode())
    return h.hexdigest()


def piece_weights(base: list[Piece], collected: list[Piece], share: float) -> list[float]:
    """Sampling weights so that `share` of the notes sampled come from the collected tunes."""
    base_notes = sum(len(p.notes) for p in base) or 1
    coll_notes = sum(len(p.notes) for p in collected) or 1
    if not collected:
        return [float(len(p.notes)) for p in base]
    w_base = (1.0 - share) / base_notes
    w_coll = share / coll_notes
    return [len(p.notes) * w_base for p in base] + [len(p.notes) * w_coll for p in collected]


# --- the run --------------------------------------------------------------------------------


class RunRecorder:
    """Writes a run's progress, heartbeat and log lines to SQL, and answers 'was it cancelled?'."""

    def __init__(self, settings: Settings, run_id: int) -> None:
        self.settings = settings
        self.run_id = run_id
        self._last_check = 0.0
        self._cancelled = False
        self.lines: list[str] = []

    def log(self, line: str) -> None:
        log.info("training run %s: %s", self.run_id, line)
        self.lines.append(f"{utcnow():%H:%M:%S} {line}")
        self._write(log="\n".join(self.lines[-500:]))

    def _write(self, **values: Any) -> None:
        with session_scope(self.settings.sqlalchemy_url) as session:
            session.execute(
                update(TrainingRun)
                .where(TrainingRun.id == self.run_id)
                .values(heartbeat_at=utcnow(), **values)
            )

    def progress(self, info: dict[str, Any]) -> None:
        clean = {k: v for k, v in info.items() if isinstance(v, int | float | str | None)}
        self._write(progress=clean)

    def status(self, status: RunStatus, **values: Any) -> None:
        self._write(status=status, **values)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if now - self._last_check >= 1.0:
            self._last_check = now
            with session_scope(self.settings.sqlalchemy_url) as session:
                self._cancelled = bool(
                    session.scalar(
                        select(TrainingRun.cancel_requested).where(TrainingRun.id == self.run_id)
                    )
                )
        return self._cancelled


def claim_run(settings: Settings, run_id: int) -> bool:
    with session_scope(settings.sqlalchemy_url) as session:
        done = dml(
            session,
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
            .values(
                status=RunStatus.RUNNING,
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                worker=worker_name(),
            ),
        ).rowcount
        return bool(done)


def collapse_rate(lm: Any, seeds: list[Piece]) -> float:
    from engine.model.generate import GenerationRequest, continue_batch

    if not seeds:
        return 0.0
    outs = continue_batch(
        lm,
        [
            GenerationRequest(seed=s, bars=GATE_BARS, style=s.style, rng_seed=i)
            for i, s in enumerate(seeds)
        ],
    )
    return sum(is_collapsed(o.notes) for o in outs) / len(outs)


def gate_seeds(pieces: list[Piece], n: int = GATE_SEEDS) -> list[Piece]:
    """The first two bars of held-out pieces, as seeds."""
    from dataclasses import replace

    seeds = []
    for p in pieces:
        cut = 2 * p.beats_per_bar
        notes = tuple(x for x in p.notes if x.start < cut)
        if len(notes) >= 3:
            seeds.append(replace(p, notes=notes))
        if len(seeds) >= n:
            break
    return seeds


def fidelity_seeds(pieces: list[Piece], n: int = FIDELITY_SEEDS) -> list[Piece]:
    """The first FIDELITY_SEED_BARS bars of held-out pieces with at least 8 notes there."""
    from dataclasses import replace

    seeds = []
    for p in pieces:
        cut = FIDELITY_SEED_BARS * p.beats_per_bar
        notes = tuple(x for x in p.notes if x.start < cut - 1e-9)
        if len(notes) >= 8:
            seeds.append(replace(p, notes=notes))
        if len(seeds) >= n:
            break
    return seeds


def seed_fidelity(lm: Any, seeds: list[Piece], pieces: list[Piece]) -> dict[str, float]:
    """The gate's seed-fidelity figures of one model: engine.model.fidelity's summary of its
    continuations of `seeds` (fixed rng seeds) and its seed information gain on `pieces`."""
    from engine.model.fidelity import seed_information_gain, summarize_fidelity
    from engine.model.generate import GenerationRequest, continue_batch

    styles = lm.codec.config.styles
    outs = continue_batch(
        lm,
        [
            GenerationRequest(
                seed=s,
                bars=FIDELITY_BARS,
                style=s.style if s.style in styles else None,
                rng_seed=i,
            )
            for i, s in enumerate(seeds)
        ],
    )
    figures = summarize_fidelity(outs, seeds) if seeds else {}
    gain = seed_information_gain(lm, pieces, max_windows=256)
    keep = ("pattern_reuse", "long_run_share", "key_kept_independent")
    return {
        **{k: figures[k] for k in keep if k in figures},
        "gain_content": gain.get("gain_content", float("nan")),
        "gain_total": gain.get("gain_total", float("nan")),
    }


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
    version = f"run{run_id}-{utcnow():%Y%m%d%H%M%S}"
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
    from engine.model.corpus import load_corpus

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
    from engine.model.train import TrainConfig, train

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
    from engine.model.checkpoint import load_checkpoint
    from engine.model.train import evaluate_nll
    from engine.worker.loaded import load_version

    candidate = load_checkpoint(out, device=device)
    active = load_version(settings, active_version)
    held = [t.piece for t in data.coll_held]
    base_test = data.base_test
    return {
        "candidate_base_nll": evaluate_nll(candidate, base_test, max_windows=256).get(
            "nll_per_note"
        ),
        "active_base_nll": evaluate_nll(active, base_test, max_windows=256).get("nll_per_note"),
        "candidate_collected_nll": (
            evaluate_nll(candidate, held).get("nll_per_note") if held else None
        ),
        "active_collected_nll": evaluate_nll(active, held).get("nll_per_note") if held else None,
        "collapse_rate": collapse_rate(candidate, gate_seeds(base_test)),
        "candidate_fidelity": seed_fidelity(candidate, fidelity_seeds(base_test), base_test),
        "active_fidelity": seed_fidelity(active, fidelity_seeds(base_test), base_test),
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
        key = f"training/{run_id}/loss.png"
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


def gate(metrics: dict[str, Any], tolerance: float) -> str | None:
    """None when the candidate may go live; otherwise the reason it may not."""
    cand, act = metrics.get("candidate_base_nll"), metrics.get("active_base_nll")
    if cand is None or act is None:
        return "the candidate could not be evaluated on the base corpus"
    if cand > act + tolerance:
        return (
            f"base-corpus NLL {cand:.3f} is worse than the active model's {act:.3f} "
            f"by more than {tolerance:g}"
        )
    if metrics.get("collapse_rate", 0.0) > 0.0:
        return f"{metrics['collapse_rate']:.0%} of its continuations collapsed to repeated notes"
    return fidelity_reason(metrics.get("candidate_fidelity"), metrics.get("active_fidelity"))


def fidelity_reason(cand: dict[str, float] | None, act: dict[str, float] | None) -> str | None:
    """Why the candidate keeps its seeds worse than the active model (None: it does not)."""
    cand, act = cand or {}, act or {}

    def both(key: str) -> tuple[float, float] | None:
        c, a = cand.get(key), act.get(key)
        if c is None or a is None or math.isnan(c) or math.isnan(a):
            return None
        return float(c), float(a)

    if (pair := both("gain_content")) and pair[0] < pair[1] - GAIN_TOLERANCE:
        return (
            f"it forgets its seeds: the seed's notes tell it {pair[0]:.3f} nats per note beyond "
            f"the key, the active model {pair[1]:.3f} (tolerance {GAIN_TOLERANCE:g})"
        )
    if (pair := both("pattern_reuse")) and pair[0] < pair[1] - REUSE_TOLERANCE:
        return (
            f"it develops its seeds less: {pair[0]:.0%} of the seed's figures recur, against "
            f"{pair[1]:.0%} for the active model"
        )
    if (pair := both("long_run_share")) and pair[0] > pair[1] + LONG_RUN_TOLERANCE:
        return (
            f"{pair[0]:.0%} of its continuations repeat a pitch 4+ times in a row, against "
            f"{pair[1]:.0%} for the active model"
        )
    return None


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


# --- `motif retrain` ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="motif retrain", description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--from-scratch", action="store_true")
    p.add_argument("--collected-share", type=float, default=0.5)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument(
        "--cancel", type=int, metavar="RUN", default=None,
        help="cancel training run RUN instead of queueing one (a running one stops at its next "
        "step and keeps no candidate)",
    )  # fmt: skip
    args = p.parse_args(argv)
    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if args.cancel is not None:
        outcome = cancel_run(args.cancel, settings)
        print(cancel_run_text(args.cancel, outcome))
        return 0 if outcome else 1
    run_id = request_retrain(
        RetrainOptions(
            epochs=args.epochs,
            from_scratch=args.from_scratch,
            collected_share=args.collected_share,
            max_minutes=args.max_minutes,
        ),
        settings=settings,
    )
    print(f"training run #{run_id} queued on the `train` queue")
    if not args.wait:
        return 0
    last = None
    while True:
        info = run_info(run_id, settings)
        shown = (info.status, info.progress.get("epoch"), info.progress.get("step"))
        if shown != last:
            last = shown
            pr = info.progress
            print(
                f"  {info.status} epoch {pr.get('epoch', '-')} step {pr.get('step', '-')} "
                f"loss {pr.get('loss', '-')} {pr.get('tokens_per_s', '-')} notes/s"
            )
        if info.status in ("done", "rejected", "failed", "cancelled"):
            print(f"run #{run_id}: {info.status} {info.error or ''} candidate {info.candidate}")
            return 0 if info.status == "done" else 1
        time.sleep(2)
