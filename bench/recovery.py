"""How long Motif takes to finish work after a fault, with real processes and default settings.

    python -m bench.recovery [--repeats 3] [--only pool-child --only worker --only broker --only postgres]

Each scenario, on a fresh embedded Motif in a temp folder with the shipped default model:
- pool-child: kill -9 of the worker's pool child mid-generation → the request done
- worker: kill -9 of a whole worker mid-generation while a second one runs → done
- broker: an own `redis-server` killed with 4 requests queued (the worker told to stop taking
  the gpu queue meanwhile, so they stay queued), restarted empty, the worker told to take it
  again → all 4 done (the time counts from the broker's restart)
- postgres: an own Postgres database made unreachable for 10 s mid-generation (3 requests) →
  all 3 done (the time counts from the database's return)
- postgres-batch: the same, 15 s, while three 256-bar requests are batched together → all 3
  done (from the database's return)
- flood (no fault at all): 200 requests (`--flood-requests`) queued at once, two `gpu,cpu`
  workers → messages the workers received per request and stage (generate and render; 1.0
  when nothing is sent twice)
- stale-claimant: the generating pool child SIGSTOPped for 40 s while a second worker runs,
  then SIGCONTed once the request is done by the other one → files and row fields the stale
  claimant changed after the takeover (0 when fenced)
Figures: seconds from the fault's end to done, median of the repeats (the unit column says
otherwise); the default reaper interval (5 s), worker heartbeat (5 s), resend age (10 s) and
claim lease (30 s) apply.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import create_engine, text

from bench.queue_flood import worker_env
from engine.queue.app import make_app
from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Request, RequestStatus

ROOT = Path(__file__).resolve().parent.parent
SEED = (ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid").read_bytes()
PG_ADMIN_URL = os.environ.get(
    "MOTIF_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class Worker:
    def __init__(self, settings: Settings, name: str) -> None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(settings.data_dir / f"{name}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "worker", "-n", f"{name}@%h"],
            env=worker_env(settings),
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.log.close()


def _settings(folder: Path, **values: object) -> Settings:
    return Settings(data_dir=folder / "var", output_dir=folder / "out", **values)  # type: ignore[arg-type]


def _ready(settings: Settings, timeout: float = 180.0) -> None:
    from engine.worker.local import serving

    deadline = time.monotonic() + timeout
    while not serving(settings):
        if time.monotonic() > deadline:
            raise TimeoutError("worker not ready")
        time.sleep(0.2)


def _submit(service: JobService, n: int, bars: int = 4) -> list[int]:
    options = validate_options(bars=bars, settings=service.settings)
    return [service.compose(Requester(discord_id=i), options, SEED, "ode.mid") for i in range(n)]


def _wait(service: JobService, ids: list[int], timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    for rid in ids:
        while True:
            try:
                prog = service.progress(rid)
            except Exception:  # noqa: BLE001 - the database may still be coming back
                prog = None
            if prog is not None and prog.finished:
                if prog.status is not RequestStatus.DONE:
                    raise RuntimeError(f"request {rid}: {prog.error_user}")
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {rid} not done")
            time.sleep(0.1)


def _generating(service: JobService, rid: int, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while service.progress(rid).status is not RequestStatus.GENERATING:
        if time.monotonic() > deadline:
            raise TimeoutError(f"request {rid} never started")
        time.sleep(0.02)
    with session_scope(service.url) as s:
        return int(s.get(Request, rid).worker.rpartition(":")[2])


def pool_child(folder: Path) -> float:
    settings = _settings(folder, batch_wait_ms=2000)
    db.upgrade(settings.sqlalchemy_url)
    w = Worker(settings, "w1")
    try:
        _ready(settings)
        service = JobService(settings)
        (rid,) = _submit(service, 1)
        os.kill(_generating(service, rid), signal.SIGKILL)
        t = time.monotonic()
        _wait(service, [rid])
        return time.monotonic() - t
    finally:
        w.kill()


def _one_generating(settings: Settings) -> tuple[JobService, int, int]:
    """Once both workers are up: one request submitted, and the pool child generating it."""
    _ready(settings)
    while len(_live(settings)) < 2:
        time.sleep(0.2)
    service = JobService(settings)
    (rid,) = _submit(service, 1)
    return service, rid, _generating(service, rid)


def whole_worker(folder: Path) -> float:
    settings = _settings(folder, batch_wait_ms=2000)
    db.upgrade(settings.sqlalchemy_url)
    workers = [Worker(settings, "w1"), Worker(settings, "w2")]
    try:
        service, rid, child = _one_generating(settings)
        with open(f"/proc/{child}/stat") as fh:
            parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        next(w for w in workers if w.proc.pid == parent).kill()
        t = time.monotonic()
        _wait(service, [rid])
        return time.monotonic() - t
    finally:
        for w in workers:
            w.kill()


def _live(settings: Settings) -> list[str]:
    from engine.worker.process import live_workers

    return live_workers(settings)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def broker(folder: Path) -> float:
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    port = _free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
            time.sleep(0.05)

    redis = start()
    settings = _settings(folder, broker_url=f"redis://127.0.0.1:{port}/0")
    db.upgrade(settings.sqlalchemy_url)
    w = Worker(settings, "w1")
    try:
        _ready(settings)
        service = JobService(settings)
        app = make_app(settings)
        node = [f"w1@{socket.gethostname()}"]
        _control(lambda: app.control.cancel_consumer("gpu", destination=node, reply=True))
        ids = _submit(service, 4)  # they stay queued in Redis
        redis.kill()
        redis.wait()
        redis = start()  # empty: the four messages are gone
        t = time.monotonic()
        _control(lambda: app.control.add_consumer("gpu", destination=node, reply=True))
        _wait(service, ids)
        return time.monotonic() - t
    finally:
        w.kill()
        redis.kill()
        redis.wait()


def _control(call: Callable[[], object], timeout: float = 60.0) -> None:
    """A remote-control command, repeated until the worker answers (it may be reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call():
                return
        except Exception:  # noqa: BLE001 - the broker connection is being re-made
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not answer")
        time.sleep(0.5)


def postgres(folder: Path, bars: int = 4, outage_s: float = 10.0) -> float:
    name = f"motif_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

    def sql(statement: str) -> None:
        with admin.connect() as conn:
            conn.execute(text(statement))

    sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    settings = _settings(folder, database_url=url, batch_wait_ms=1500, max_bars=max(64, bars))
    db.upgrade(url)
    w = Worker(settings, "w1")
    try:
        _ready(settings)
        service = JobService(settings)
        ids = _submit(service, 3, bars=bars)
        _generating(service, ids[0])
        time.sleep(2.0)  # the batch wait is over: the three decode together
        sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        time.sleep(outage_s)
        sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        t = time.monotonic()
        _wait(service, ids)
        return time.monotonic() - t
    finally:
        w.kill()
        for engine in db._engines.values():
            engine.dispose()
        sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def postgres_batch(folder: Path) -> float:
    return postgres(folder, bars=256, outage_s=15.0)


def flood_messages(folder: Path) -> float:
    """Messages received per request and stage in a fault-free flood (the larger of the two)."""
    from bench.queue_flood import flood

    settings = _settings(
        folder,
        queue_cap=10_000,
        user_rate_per_min=10_000,
        user_max_concurrent=10_000,
        guild_max_open=10_000,
    )
    result = flood(settings, n_requests=FLOOD_REQUESTS[0], n_workers=2, bars=2)
    if not result["all_done"]:
        raise RuntimeError(f"flood not all done: {result}")
    print(
        f"  flood: {result['requests']} requests, {result['generate_messages']} generate and "
        f"{result['render_messages']} render messages, {result['requests_per_s']} requests/s, "
        f"median batch {result['median_batch']}, {result['leftover_messages']} messages left "
        "in the broker",
        flush=True,
    )
    return max(float(result["generate_per_request"]), float(result["render_per_request"]))


FLOOD_REQUESTS = [200]


def stale_claimant(folder: Path) -> float:
    """Writes by a hung claimant after it was taken over: files added or changed, plus the
    request row's fields that changed, once it runs again."""
    settings = _settings(folder, batch_wait_ms=2000)
    db.upgrade(settings.sqlalchemy_url)
    workers = [Worker(settings, "w1"), Worker(settings, "w2")]
    child = None
    try:
        service, rid, child = _one_generating(settings)
        os.kill(child, signal.SIGSTOP)
        stopped = time.monotonic()
        _wait(service, [rid], timeout=300)
        print(f"  stale-claimant: done by the other worker {time.monotonic() - stopped:.1f} s "
              "after the stop", flush=True)  # fmt: skip
        time.sleep(max(0.0, 40.0 - (time.monotonic() - stopped)))
        files, row = _snapshot(settings, rid)
        os.kill(child, signal.SIGCONT)
        child = None
        time.sleep(25)  # the stale claimant finishes its decode and tries to keep it
        files_after, row_after = _snapshot(settings, rid)
        changed = sum(1 for k, v in files_after.items() if files.get(k) != v)
        return float(changed + sum(1 for k in row if row[k] != row_after[k]))
    finally:
        if child is not None:
            os.kill(child, signal.SIGCONT)
        for w in workers:
            w.kill()


def _snapshot(settings: Settings, rid: int) -> tuple[dict[str, tuple[int, int]], dict]:
    base = settings.data_dir / "artifacts" / "requests" / str(rid)
    files = {
        str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in base.rglob("*")
        if p.is_file()
    }
    with session_scope(settings.sqlalchemy_url) as s:
        req = s.get(Request, rid)
        assert req is not None
        row = {
            "status": req.status,
            "attempts": req.attempts,
            "timings": dict(req.timings or {}),
            "result_tune_id": req.result_tune_id,
            "artifacts": sorted((a.kind.value, a.key, a.size) for a in req.artifacts),
        }
    return files, row


SCENARIOS: dict[str, Callable[[Path], float]] = {
    "pool-child": pool_child,
    "worker": whole_worker,
    "broker": broker,
    "postgres": postgres,
    "postgres-batch": postgres_batch,
    "flood": flood_messages,
    "stale-claimant": stale_claimant,
}
UNITS = {"flood": "messages per request and stage", "stale-claimant": "writes after takeover"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recovery", description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", action="append", choices=sorted(SCENARIOS))
    p.add_argument("--flood-requests", type=int, default=200)
    args = p.parse_args(argv)
    FLOOD_REQUESTS[0] = args.flood_requests
    names = args.only or list(SCENARIOS)
    with open("/proc/cpuinfo") as fh:
        cpu = next((line.split(":", 1)[1].strip() for line in fh if "model name" in line), "?")
    print(f"cpu: {cpu}, {os.cpu_count()} cores; load {os.getloadavg()[0]:.2f} at start")
    print("| fault | median | each run | unit |\n|---|---:|---|---|")
    for name in names:
        runs = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory(prefix=f"motif-recovery-{name}-") as folder:
                runs.append(SCENARIOS[name](Path(folder)))
        each = ", ".join(f"{r:.2f}" for r in runs)
        unit = UNITS.get(name, "s from the fault's end to done")
        print(f"| {name} | {statistics.median(runs):.2f} | {each} | {unit} |", flush=True)
    print(f"load {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
