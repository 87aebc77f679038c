"""200 requests queued at once through real worker processes: all done, no duplicates, no losses.

    python -m bench.queue_flood [--requests 200] [--workers 2] [--broker filesystem|redis]

Uses the shipped default model (or MOTIF_DEFAULT_MODEL_PATH) on embedded defaults in a temp folder.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import func, select

from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Artifact, ArtifactKind, Request, RequestStatus

ROOT = Path(__file__).resolve().parent.parent


def worker_env(settings: Settings) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIF_")}
    for name, value in settings.model_dump(exclude={"discord_token"}).items():
        if value not in (None, ""):
            env[f"MOTIF_{name.upper()}"] = str(value)
    return env


def flood(settings: Settings, n_requests: int, n_workers: int, bars: int = 2) -> dict[str, object]:
    """Queue `n_requests` at once, let `n_workers` real workers drain them, check the books."""
    from engine.worker.process import live_workers, stop_worker_process

    db.upgrade(settings.sqlalchemy_url)
    service = JobService(settings)
    seed = (ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid").read_bytes()
    started = time.perf_counter()
    ids = [
        service.compose(
            Requester(discord_id=i),
            validate_options(bars=bars, rng_seed=i),
            seed if i % 2 else None,
            "ode.mid",
        )
        for i in range(n_requests)
    ]
    submit_s = time.perf_counter() - started
    procs = []
    for k in range(n_workers):
        log = open(settings.data_dir / f"worker-{k}.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "engine.cli",
                    "worker",
                    "-Q",
                    "gpu,cpu",
                    "-n",
                    f"flood{k}@%h",
                ],
                env=worker_env(settings),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    try:
        while len(live_workers(settings)) < n_workers:
            time.sleep(0.2)
        t0 = time.perf_counter()
        deadline = t0 + 1800
        while True:
            with session_scope(settings.sqlalchemy_url) as s:
                open_count = s.scalar(
                    select(func.count(Request.id)).where(
                        Request.status.in_(
                            (
                                RequestStatus.QUEUED,
                                RequestStatus.GENERATING,
                                RequestStatus.RENDERING,
                            )
                        )
                    )
                )
            if not open_count or time.perf_counter() > deadline:
                break
            time.sleep(0.5)
        drain_s = time.perf_counter() - t0
    finally:
        for p in procs:
            stop_worker_process(p)
    with session_scope(settings.sqlalchemy_url) as s:
        statuses = Counter(
            st.value for st in s.scalars(select(Request.status).where(Request.id.in_(ids)))
        )
        per_request = Counter(
            rid
            for rid in s.scalars(select(Artifact.request_id).where(Artifact.request_id.in_(ids)))
        )
        batches = [
            (t or {}).get("batch_size", 0)
            for t in s.scalars(select(Request.timings).where(Request.id.in_(ids)))
        ]
        workers = Counter(w for w in s.scalars(select(Request.worker).where(Request.id.in_(ids))))
    # the attempts' files (each request's seed, kept at submission, sits beside its attempts)
    requests_dir = settings.data_dir / "artifacts" / "requests"
    files = [p for p in requests_dir.glob("*/attempt-*/*") if p.is_file()]
    received = tasks_received(settings.data_dir.glob("worker-*.log"))
    # messages no worker consumed, left in the embedded broker's folder (issue #26 found 4
    # do-nothing renders there after a flood): none when nothing is sent twice
    leftover = None
    if settings.celery_broker_url.startswith("filesystem://"):
        leftover = len(list((settings.broker_folder / "out").glob("*.msg")))
    # MIDI, audio, piano roll, score, MusicXML, PDF: one each (a score's second page only
    # when it has one, which a flood's short requests do not)
    per = len(set(ArtifactKind) - {ArtifactKind.SCORE_2})
    return {
        "requests": n_requests,
        "workers": n_workers,
        "statuses": dict(statuses),
        "all_done": statuses.get("done", 0) == n_requests,
        "requests_with_all_artifacts": sum(1 for rid in ids if per_request.get(rid) == per),
        "artifact_files": len(files),
        "duplicates": sum(1 for c in per_request.values() if c > per)
        + max(0, len(files) - per * n_requests),
        "submit_s": round(submit_s, 2),
        "drain_s": round(drain_s, 1),
        "requests_per_s": round(n_requests / drain_s, 2) if drain_s else None,
        "median_batch": statistics.median(batches) if batches else None,
        "max_batch": max(batches) if batches else None,
        "claiming_processes": len(workers),
        # messages the workers received, per request (1.0 each when nothing is sent twice)
        "generate_messages": received["motif.generate"],
        "render_messages": received["motif.render"],
        "generate_per_request": round(received["motif.generate"] / n_requests, 3),
        "render_per_request": round(received["motif.render"] / n_requests, 3),
        "leftover_messages": leftover,
    }


def tasks_received(logs: Iterable[Path]) -> Counter[str]:
    """How many messages of each task the workers received, from their logs (Celery logs
    `Task <name>[<id>] received` for each)."""
    found: Counter[str] = Counter()
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            match = RECEIVED.search(line)
            if match:
                found[match.group(1)] += 1
    return found


RECEIVED = re.compile(r"Task ([\w.]+)\[[^\]]+\] received")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bars", type=int, default=2)
    p.add_argument("--broker", default="filesystem://")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="motif-flood-") as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            broker_url=args.broker if args.broker != "filesystem://" else "",
            queue_cap=100_000,
            user_rate_per_min=1000,
            user_max_concurrent=1000,
            batch_wait_ms=20,
        )
        result = flood(settings, args.requests, args.workers, args.bars)
    for k, v in result.items():
        print(f"{k:28} {v}")
    return 0 if result["all_done"] and not result["duplicates"] else 1


if __name__ == "__main__":
    sys.exit(main())
