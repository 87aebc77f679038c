"""Admin operations behind `/retrain`, `/model …`, `/stats` and `motif model …`. No torch.

Who may call them is decided here too (`is_admin`), so the bot and the CLI share one rule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from engine.errors import BadParams, Busy, NotFound
from engine.queue import dispatch as queue_dispatch
from engine.service.requests import user_for
from engine.settings import Settings, get_settings
from engine.store.db import dml, session_scope
from engine.store.models import activate, active_model
from engine.store.records import (
    AuditLog,
    Feedback,
    ModelStatus,
    ModelVersion,
    Request,
    RequestStatus,
    RunStatus,
    TrainingRun,
    Tune,
    User,
    utcnow,
)

log = logging.getLogger(__name__)

OPEN_RUN_STATES = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.EVALUATING)


def is_admin(
    settings: Settings,
    user_id: int,
    *,
    guild_id: int | None = None,
    role_ids: set[int] | frozenset[int] = frozenset(),
    manage_guild: bool = False,
) -> bool:
    """Admin rights come from settings only. The model is shared by every server and anyone can
    add the bot to a server they manage, so Manage Server and roles count in the home guild only."""
    if user_id in settings.owners or user_id in settings.admin_users:
        return True
    if settings.home_guild_id is None or guild_id != settings.home_guild_id:
        return False
    return manage_guild or bool(settings.admin_roles & role_ids)


def audit(
    settings: Settings, user_id: int | None, action: str, allowed: bool, detail: str = ""
) -> None:
    with session_scope(settings.sqlalchemy_url) as session:
        session.add(
            AuditLog(user_discord_id=user_id, action=action[:64], allowed=allowed, detail=detail)
        )
    if not allowed:
        log.warning("refused admin action %s by user %s", action, user_id)


@dataclass(frozen=True)
class ModelInfo:
    version: str
    status: str
    active: bool
    created_at: str
    metrics: dict[str, Any]
    reject_reason: str | None


def list_models(settings: Settings | None = None, limit: int = 20) -> list[ModelInfo]:
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        rows = session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc()).limit(limit))
        return [
            ModelInfo(
                version=m.version,
                status=m.status.value,
                active=m.active,
                created_at=m.created_at.strftime("%Y-%m-%d %H:%M"),
                metrics=dict(m.metrics or {}),
                reject_reason=m.reject_reason,
            )
            for m in rows
        ]


def active_version(settings: Settings | None = None) -> str | None:
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        active = active_model(session)
        return active.version if active else None


def activate_model(version: str, settings: Settings | None = None) -> str:
    """Make `version` the active model; workers pick it up at their next job. Returns it."""
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        target = session.scalar(select(ModelVersion).where(ModelVersion.version == version))
        if target is None:
            raise NotFound(f"no model version {version!r}.")
        if target.status is ModelStatus.REJECTED:
            raise BadParams(
                f"model {version} was rejected by the gate ({target.reject_reason}); "
                "it cannot be activated."
            )
        activate(session, target)
        return target.version


def rollback(settings: Settings | None = None) -> str:
    """Return to the model that was active before the current one."""
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        current = active_model(session)
        if current is None:
            raise NotFound("there is no active model to roll back from.")
        previous = session.scalar(
            select(ModelVersion)
            .where(
                ModelVersion.status == ModelStatus.RETIRED,
                ModelVersion.activated_at.is_not(None),
                ModelVersion.id != current.id,
            )
            .order_by(ModelVersion.activated_at.desc())
            .limit(1)
        )
        if previous is None:
            raise NotFound("there is no earlier model to roll back to.")
        version = previous.version
    return activate_model(version, s)


@dataclass(frozen=True)
class Stats:
    requests_total: int
    requests_by_status: dict[str, int]
    requests_last_day: int
    users: int
    tunes_shared: int
    thumbs_up: int
    thumbs_down: int
    median_generate_s: float | None
    median_render_s: float | None
    active_model: str | None


def stats(settings: Settings | None = None) -> Stats:
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        by_status = {
            status.value: count
            for status, count in session.execute(
                select(Request.status, func.count(Request.id)).group_by(Request.status)
            )
        }
        day = utcnow() - timedelta(days=1)
        last_day = session.scalar(select(func.count(Request.id)).where(Request.created_at >= day))
        users = session.scalar(select(func.count(User.id)))
        shared = session.scalar(select(func.count(Tune.id)).where(Tune.consent.is_(True)))
        up = session.scalar(select(func.count(Feedback.id)).where(Feedback.rating > 0))
        down = session.scalar(select(func.count(Feedback.id)).where(Feedback.rating < 0))
        timings = [
            t
            for t in session.scalars(
                select(Request.timings)
                .where(Request.status == RequestStatus.DONE)
                .order_by(Request.id.desc())
                .limit(200)
            )
            if t
        ]
        active = active_model(session)
        active_name = active.version if active else None
    return Stats(
        requests_total=sum(by_status.values()),
        requests_by_status=by_status,
        requests_last_day=last_day or 0,
        users=users or 0,
        tunes_shared=shared or 0,
        thumbs_up=up or 0,
        thumbs_down=down or 0,
        median_generate_s=_median([t.get("generate_s") for t in timings]),
        median_render_s=_median([t.get("render_s") for t in timings]),
        active_model=active_name,
    )


def _median(values: list[Any]) -> float | None:
    xs = sorted(float(v) for v in values if isinstance(v, int | float))
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


@dataclass(frozen=True)
class RetrainOptions:
    epochs: int = 2
    from_scratch: bool = False
    collected_share: float = 0.5  # share of training examples drawn from collected tunes
    max_minutes: float = 30.0
    model_config: dict[str, Any] | None = None  # tiny configs for tests; None: the default's

    def validate(self) -> RetrainOptions:
        if not 1 <= self.epochs <= 100:
            raise BadParams("epochs must be from 1 to 100.")
        if not 0.0 <= self.collected_share <= 1.0:
            raise BadParams("the share of collected tunes must be between 0 and 1.")
        if not 0.1 <= self.max_minutes <= 24 * 60:
            raise BadParams("max_minutes must be between 0.1 and 1440.")
        return self


def request_retrain(
    options: RetrainOptions,
    *,
    requested_by: int | None = None,
    channel_id: int | None = None,
    settings: Settings | None = None,
    dispatch: bool = True,
) -> int:
    """Queue one training run on the `train` queue; only one may be open at a time."""
    s = settings or get_settings()
    options = options.validate()
    with session_scope(s.sqlalchemy_url) as session:
        running = session.scalar(
            select(TrainingRun).where(TrainingRun.status.in_(OPEN_RUN_STATES)).limit(1)
        )
        if running is not None:
            raise Busy(
                f"training run #{running.id} is already {running.status.value}; "
                "wait for it to finish or cancel it (`/retrain cancel:"
                f"{running.id}` or `motif retrain --cancel {running.id}`)."
            )
        user_id = None
        if requested_by is not None:
            user_id = user_for(session, requested_by).id
        run = TrainingRun(
            requested_by=user_id,
            channel_id=channel_id,
            params={
                "epochs": options.epochs,
                "from_scratch": options.from_scratch,
                "collected_share": options.collected_share,
                "max_minutes": options.max_minutes,
                "model_config": options.model_config,
            },
            status=RunStatus.QUEUED,
            progress={},
            metrics={},
        )
        session.add(run)
        session.flush()
        run_id = run.id
    if dispatch:
        # sent after the commit: a hung broker must not hold the database's write lock
        try:
            queue_dispatch.dispatch_retrain(run_id, s)
        except Exception:
            # never sent: the row must not block the next request as "already queued"
            with session_scope(s.sqlalchemy_url) as session:
                session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
                    .values(status=RunStatus.FAILED, error="the job queue was unreachable")
                )
            raise
    return run_id


@dataclass(frozen=True)
class RunInfo:
    id: int
    status: str
    progress: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None
    candidate: str | None
    channel_id: int | None
    loss_curve_key: str | None


def run_info(run_id: int, settings: Settings | None = None) -> RunInfo:
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            raise NotFound(f"training run #{run_id} does not exist.")
        candidate = session.scalar(
            select(ModelVersion.version).where(ModelVersion.training_run_id == run.id)
        )
        return RunInfo(
            id=run.id,
            status=run.status.value,
            progress=dict(run.progress or {}),
            metrics=dict(run.metrics or {}),
            error=run.error,
            candidate=candidate,
            channel_id=run.channel_id,
            loss_curve_key=(run.metrics or {}).get("loss_curve_key"),
        )


def cancel_run(run_id: int, settings: Settings | None = None) -> str:
    """Cancel a training run: "cancelled" (it had not started), "stopping" (it is training; the
    loop stops at its next step and keeps no candidate), or "" (it is being evaluated or has
    ended: too late). Each change is a compare-and-set, so a worker claiming the run meanwhile
    is never overwritten."""
    s = settings or get_settings()
    with session_scope(s.sqlalchemy_url) as session:
        if session.get(TrainingRun, run_id) is None:
            raise NotFound(f"training run #{run_id} does not exist.")
        queued = dml(
            session,
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.QUEUED)
            .values(status=RunStatus.CANCELLED, finished_at=utcnow()),
        ).rowcount
        if queued:
            return "cancelled"
        running = dml(
            session,
            update(TrainingRun)
            .where(TrainingRun.id == run_id, TrainingRun.status == RunStatus.RUNNING)
            .values(cancel_requested=True),  # the training loop checks this between steps
        ).rowcount
        return "stopping" if running else ""


def cancel_run_text(run_id: int, outcome: str) -> str:
    """What to tell whoever asked to cancel run `run_id` (the bot and the command line)."""
    if outcome == "cancelled":
        return f"Training run #{run_id} is cancelled; it had not started."
    if outcome == "stopping":
        return f"Training run #{run_id} stops at its next step; no candidate will be kept."
    return f"Training run #{run_id} is past training (evaluated or ended); nothing to cancel."
