"""Following requests: a request's progress (status, queue place, artifacts), a user's history,
and the queue's state (waiting, running, live workers, the active model)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from engine.errors import NotFound
from engine.service.users import Requester, require_visible, user_of
from engine.settings import Settings, get_settings
from engine.store.artifacts import file_name
from engine.store.db import session_scope
from engine.store.models import active_model
from engine.store.records import (
    RUNNING_STATES,
    Request,
    RequestKind,
    RequestStatus,
    Worker,
)
from engine.store.records import (
    alive_since as worker_alive_since,
)


@dataclass(frozen=True)
class ArtifactInfo:
    kind: str
    key: str
    size: int
    content_type: str
    filename: str


@dataclass(frozen=True)
class Progress:
    request_id: int
    status: RequestStatus
    kind: RequestKind
    queue_position: int | None
    params: dict[str, Any]
    model_version: str | None
    device: str | None
    worker: str | None
    timings: dict[str, float]
    notes: dict[str, Any]
    error_user: str | None
    seed_name: str | None
    channel_id: int | None
    user_discord_id: int | None
    artifacts: list[ArtifactInfo] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status.finished


@dataclass(frozen=True)
class QueueStatus:
    queued: int
    running: int
    workers: list[str]  # host names: for operators (`motif status`), not for chat
    active_model: str | None
    worker_counts: list[str] = field(default_factory=list)  # "2 × gpu,train on cuda": for chat


SEED_NAME = "seed_name"  # in a request's notes: the seed's name as its requester gave it


def seed_name_of(req: Request) -> str | None:
    """The seed's name as this request's requester gave it. A tune is stored once per content
    hash, so its own name is the first uploader's: shown only to that uploader."""
    name = (req.notes or {}).get(SEED_NAME)
    if isinstance(name, str):
        return name
    tune = req.seed_tune
    if tune is None:
        return None
    return tune.name if tune.owner_id is not None and tune.owner_id == req.user_id else "a seed"


class Following:
    """Progress, history and queue status, bound to one set of settings (JobService includes
    it)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.url = self.settings.sqlalchemy_url

    def progress(self, request_id: int) -> Progress:
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            position = None
            if req.status is RequestStatus.QUEUED:
                ahead = session.scalar(
                    select(func.count(Request.id)).where(
                        Request.status == RequestStatus.QUEUED, Request.id < req.id
                    )
                )
                position = (ahead or 0) + 1
            seed_name = seed_name_of(req)
            user_discord_id = req.user.discord_id if req.user else None
            return Progress(
                request_id=req.id,
                status=req.status,
                kind=req.kind,
                queue_position=position,
                params=dict(req.params),
                model_version=req.model_version,
                device=req.device,
                worker=req.worker,
                timings=dict(req.timings or {}),
                notes=dict(req.notes or {}),
                error_user=req.error_user,
                seed_name=seed_name,
                channel_id=req.channel_id,
                user_discord_id=user_discord_id,
                artifacts=[
                    ArtifactInfo(
                        kind=a.kind.value,
                        key=a.key,
                        size=a.size,
                        content_type=a.content_type,
                        filename=file_name(a.key),
                    )
                    for a in sorted(req.artifacts, key=lambda a: a.kind.value)
                ],
            )

    def visible_progress(self, request_id: int, who: Requester) -> Progress:
        """A request's progress for someone who may see it (their own, or posted where they
        are); NotFound otherwise."""
        with session_scope(self.url) as session:
            req = session.get(Request, request_id)
            if req is None:
                raise NotFound(f"request #{request_id} does not exist.")
            require_visible(session, req, who)
        return self.progress(request_id)

    def history(self, who: Requester, limit: int = 10) -> list[Progress]:
        with session_scope(self.url) as session:
            user = user_of(session, who)
            if user is None:
                return []
            ids = list(
                session.scalars(
                    select(Request.id)
                    .where(Request.user_id == user.id)
                    .order_by(Request.id.desc())
                    .limit(max(1, min(limit, 25)))
                )
            )
        return [self.progress(i) for i in ids]

    def queue_status(self) -> QueueStatus:
        with session_scope(self.url) as session:
            queued = session.scalar(
                select(func.count(Request.id)).where(Request.status == RequestStatus.QUEUED)
            )
            running = session.scalar(
                select(func.count(Request.id)).where(Request.status.in_(RUNNING_STATES))
            )
            alive_since = worker_alive_since(self.settings.worker_heartbeat_s)
            alive = list(session.scalars(select(Worker).where(Worker.last_seen >= alive_since)))
            workers = [f"{w.hostname} [{w.queues}] on {w.device or '?'}" for w in alive]
            kinds = Counter((w.queues, w.device or "?") for w in alive)
            counts = [
                f"{n} × {queues} on {device}" for (queues, device), n in sorted(kinds.items())
            ]
            active = active_model(session)
            return QueueStatus(
                queued=queued or 0,
                running=running or 0,
                workers=workers,
                active_model=active.version if active else None,
                worker_counts=counts,
            )
