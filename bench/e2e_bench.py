"""End to end, as `motif compose` runs it: a warm `motif worker` subprocess on embedded defaults
(SQLite, `filesystem://` broker, local artifacts), requests submitted through `JobService`.

Times come from the request row (`generating_at`, `finished_at`, written by the worker) against
the wall clock at submit, so polling does not blur them. Redis is measured beside the filesystem
broker when it answers on 127.0.0.1:6379 (database 13, flushed: keep it for the bench).
"""

from __future__ import annotations

import io
import logging
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from bench import workload
from engine.settings import Settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = os.environ.get("MOTIF_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def worker_env(settings: Settings, threads: int | None) -> dict[str, str]:
    """The environment that makes a subprocess see the same Motif (as tests/conftest.py does)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIF_")}
    for name, value in settings.model_dump(exclude={"discord_token"}).items():
        if value is not None and value != "":
            env[f"MOTIF_{name.upper()}"] = str(value)
    if threads:
        env["MOTIF_TORCH_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass
class Worker:
    """One `motif worker -Q gpu,cpu,train -c 1` subprocess and the service that feeds it."""

    name: str
    settings: Settings
    threads: int | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.settings.data_dir / "worker.log"

    def start(self) -> Worker:
        from engine.store import db

        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        db.upgrade(self.settings.sqlalchemy_url)
        with open(self.log_path, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "engine.cli", "worker", "-Q", "gpu,cpu,train", "-c", "1",
                 "-n", f"bench-{self.name}-{uuid.uuid4().hex[:6]}@%h"],
                env=worker_env(self.settings, self.threads), cwd=ROOT, stdout=fh,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 180.0) -> None:
        from engine.worker.process import wait_worker_ready

        assert self.proc is not None
        try:
            wait_worker_ready(self.settings, self.proc, timeout, self.tail)
        except (RuntimeError, TimeoutError) as exc:
            raise type(exc)(f"{self.name} {exc}") from None

    def stop(self) -> None:
        from engine.worker.process import stop_worker_process

        if self.proc is not None:
            stop_worker_process(self.proc)

    def tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def compose(self, bars: int, seed: bytes | None, timeout: float = 600.0) -> dict[str, Any]:
        """Submit one request and wait for it; times in seconds from the moment of submitting."""
        from engine.service.requests import JobService, Requester, validate_options
        from engine.store.db import session_scope
        from engine.store.records import Request, RequestStatus

        service = JobService(self.settings)
        options = validate_options(bars=bars, rng_seed=7, settings=self.settings)
        t0 = time.time()
        rid = service.compose(Requester(origin="cli", name="bench"), options, seed,
                              "ode-to-joy.mid" if seed else "")  # fmt: skip
        submitted = time.time() - t0
        deadline = time.monotonic() + timeout
        while not (prog := service.progress(rid)).finished:
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {rid} still {prog.status}: {self.tail()}")
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} worker exited: {self.tail()}")
            time.sleep(0.05)
        if prog.status is not RequestStatus.DONE:
            raise RuntimeError(f"request {rid} {prog.status.value}: {prog.error_user}")
        with session_scope(self.settings.sqlalchemy_url) as session:
            row = session.get(Request, rid)
            generating_at, finished_at = row.generating_at, row.finished_at
        audio_s = math.nan
        audio = next((a for a in prog.artifacts if a.kind == "audio"), None)
        if audio is not None:
            import soundfile

            audio_s = soundfile.info(io.BytesIO(service.artifact_bytes(audio))).duration
        return {
            "submit_s": submitted,
            "queue_s": generating_at.timestamp() - t0,
            "done_s": finished_at.timestamp() - t0,
            "generate_s": prog.timings.get("generate_s", math.nan),
            "render_s": prog.timings.get("render_s", math.nan),
            "notes": prog.timings.get("notes"),
            "audio_s": audio_s,
        }


def redis_reachable(url: str = REDIS_URL) -> str | None:
    """None when Redis answers, else the reason it is skipped."""
    u = urlparse(url)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=1):
            pass
    except OSError as exc:
        return f"Redis not reachable at {u.hostname}:{u.port or 6379} ({exc})"
    try:
        import redis

        redis.Redis.from_url(url).flushdb()  # stale messages of an interrupted run would be
    except Exception as exc:  # noqa: BLE001 - any client failure means: skip Redis
        return f"Redis at {url} not usable: {exc}"
    return None


def bars_for(seconds: float, tempo_bpm: float, beats_per_bar: float) -> int:
    return math.ceil(seconds / (beats_per_bar * 60.0 / tempo_bpm))


def run(
    repeats: int = 5,
    bars: tuple[int, ...] = (8, 32),
    music_s: float | None = 30.0,
    redis: bool = True,
    threads: int | None = None,
    model_path: str | None = None,
    queue_bars: int = 1,
) -> dict[str, Any]:
    """Median over `repeats` interleaved rounds of: queue overhead (submit → `generating`) on
    each broker with `queue_bars`-bar requests; submit → done for each of `bars`, and for enough
    bars that the continuation lasts `music_s` seconds at the seed's tempo (the README seed)."""
    from engine.music.midi import load_seed

    seed = workload.EXAMPLE_SEED.read_bytes()
    piece = load_seed(seed)
    sizes = {f"{b} bars": b for b in bars}
    if music_s:
        b30 = bars_for(music_s, piece.tempo_bpm, piece.beats_per_bar)
        sizes[f"{music_s:g} s of music"] = b30
    choice = workload.motif_model(model_path)
    out: dict[str, Any] = {"model": choice.label, "repeats": repeats, "threads": threads,
                           "seed": f"{workload.EXAMPLE_SEED.name} ({piece.tempo_bpm:g} BPM, "
                                   f"{piece.time_signature[0]}/{piece.time_signature[1]})",
                           "notes": []}  # fmt: skip
    with workload.temp_dir("motif-bench-e2e-") as tmp:
        model_file = choice.file(Path(tmp))
        workers = {"filesystem": Worker("filesystem", _settings(Path(tmp) / "fs", model_file),
                                        threads)}  # fmt: skip
        reason = redis_reachable() if redis else "not asked for"
        if reason is None:
            workers["redis"] = Worker(
                "redis", _settings(Path(tmp) / "redis", model_file, broker_url=REDIS_URL), threads
            )
        else:
            out["notes"].append(f"redis skipped: {reason}")
        try:
            t0 = time.perf_counter()
            for w in workers.values():
                w.start()
            for w in workers.values():
                w.wait_ready()
            out["worker_start_s"] = time.perf_counter() - t0
            for w in workers.values():  # warm: model loaded, renderer and DB paths hot
                w.compose(queue_bars, seed)
            fs = workers["filesystem"]
            rounds: dict[str, list[dict[str, Any]]] = {f"queue {n}": [] for n in workers}
            rounds.update({name: [] for name in sizes})
            for _ in range(repeats):
                for name, w in workers.items():
                    rounds[f"queue {name}"].append(w.compose(queue_bars, seed))
                for name, b in sizes.items():
                    rounds[name].append(fs.compose(b, seed))
        finally:
            for w in workers.values():
                w.stop()
    for name in workers:
        runs = rounds[f"queue {name}"]
        out[f"queue_{name}_s"] = workload.median([r["queue_s"] for r in runs])
        out[f"submit_{name}_s"] = workload.median([r["submit_s"] for r in runs])
    for name, b in sizes.items():
        runs = rounds[name]
        out[name] = {
            "bars": b,
            "done_s": workload.median([r["done_s"] for r in runs]),
            "generate_s": workload.median([r["generate_s"] for r in runs]),
            "render_s": workload.median([r["render_s"] for r in runs]),
            "notes": workload.median([r["notes"] for r in runs]),
            "audio_s": workload.median([r["audio_s"] for r in runs]),
            "music_s": b * piece.beats_per_bar * 60.0 / piece.tempo_bpm,
        }
    if music_s:
        out["music_target_s"] = 15.0
    return out


def _settings(folder: Path, model_file: Path, **overrides: Any) -> Settings:
    """Embedded defaults in their own folder, serving `model_file`."""
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=folder / "var",
        output_dir=folder / "out",
        default_model_path=model_file,
        device="cpu",
        **overrides,
    )
