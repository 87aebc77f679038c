"""Shared fixtures: a fresh embedded Motif per test, and the machine's real services when present."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine import db
from engine.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("MOTIF_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MOTIF_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("MOTIF_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "var",
        "output_dir": tmp_path / "out",
        "batch_wait_ms": 0,
        "broker_polling_interval_s": 0.05,
        "worker_heartbeat_s": 1.0,
        "reaper_interval_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess needs to see the same Motif as the test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIF_")}
    for name, value in settings.model_dump(exclude={"discord_token"}).items():
        if value is None or value == "":
            continue
        env[f"MOTIF_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models on one torch thread: extra threads only contend for the shared cores.
    (torch is imported here, not at the top: the bot's tests run without it.)"""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path)
    db.upgrade(s.sqlalchemy_url)
    return s


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set MOTIF_TEST_PG_URL)")
    from sqlalchemy import create_engine, text

    engine = create_engine(PG_URL)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL at {PG_URL} is not usable: {exc}")
    finally:
        engine.dispose()
    yield PG_URL


@pytest.fixture
def own_pg_url() -> Iterator[str]:
    """A database of this test's own on the shared server, dropped afterwards."""
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set MOTIF_TEST_PG_URL)")
    name = f"motif_test_{uuid.uuid4().hex[:12]}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"cannot create a database on {PG_URL}: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        db.engine_for(url).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (set MOTIF_TEST_REDIS_URL)")
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    return REDIS_URL


@pytest.fixture
def amqp_url() -> str:
    if not port_open("127.0.0.1", 5672):
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 (set MOTIF_TEST_AMQP_URL)")
    return AMQP_URL


class WorkerProcess:
    """A real `motif worker` subprocess for the given settings."""

    def __init__(self, settings: Settings, queues: str = "gpu,cpu,train", concurrency: int = 1):
        self.settings = settings
        self.queues = queues
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = settings.data_dir / f"worker-{uuid.uuid4().hex[:6]}.log"

    def start(self, wait: bool = True) -> WorkerProcess:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "worker",
                "-Q",
                self.queues,
                "-c",
                str(self.concurrency),
                "-n",
                f"test-{uuid.uuid4().hex[:8]}@%h",
            ],
            env=settings_env(self.settings),
            cwd=ROOT,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 90.0) -> None:
        from engine.cli import wait_worker_ready

        assert self.proc is not None
        wait_worker_ready(self.settings, self.proc, timeout, self.tail)

    def kill9(self) -> None:
        import signal

        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        from engine.cli import stop_worker_process

        if self.proc is not None:
            stop_worker_process(self.proc)
        self._fh.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def worker_factory() -> Iterator[type[WorkerProcess]]:
    started: list[WorkerProcess] = []

    class Tracked(WorkerProcess):
        def start(self, wait: bool = True) -> WorkerProcess:
            started.append(self)
            return super().start(wait)

    yield Tracked
    for w in started:
        with contextlib.suppress(Exception):
            w.stop()


def wait_finished(service, request_id: int, timeout: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        prog = service.progress(request_id)
        if prog.finished:
            return prog
        time.sleep(0.1)
    raise TimeoutError(f"request {request_id} still {service.progress(request_id).status}")


def example_seed_bytes() -> bytes:
    return (ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid").read_bytes()


def default_model_present() -> bool:
    return (ROOT / "engine" / "data" / "motif-default.pt").exists()


def synthetic_pieces(n: int = 24, seed: int = 0) -> list:
    """Small real-looking tunes (24 to 48 notes) for tiny training runs."""
    from bench.workload import synthetic_pieces as tunes

    return tunes(n, notes=(24, 48), seed=seed)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few steps with the real training code (not the shipped one)."""
    from engine.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-model") / "tiny.pt"
    pieces = synthetic_pieces()
    train(
        TrainConfig(
            out=out,
            corpus_path=None,
            pieces=pieces[:20],
            val_pieces=pieces[20:],
            test_pieces=pieces[20:],
            d_embed=32,
            hidden=48,
            layers=1,
            seed_max=16,
            target_len=16,
            batch_size=8,
            epochs=1,
            max_steps=30,
            warmup_steps=5,
            eval_windows=16,
            device="cpu",
            threads=1,
            progress=False,
            version="tiny-test",
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real corpus built by the real corpus code from music21's bundled files."""
    from engine.corpus import build_corpus

    out = tmp_path_factory.mktemp("tiny-corpus") / "corpus.npz"
    build_corpus(
        out,
        collections=("essenFolksong", "bach"),
        max_per_collection=12,
        workers=1,
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def tiny_corpus_model_path(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus_path: Path
) -> Path:
    """A tiny model trained briefly on the tiny real corpus: the 'active model' of gate tests."""
    from engine.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-corpus-model") / "tiny-corpus.pt"
    train(
        TrainConfig(
            out=out,
            corpus_path=tiny_corpus_path,
            d_embed=32,
            hidden=48,
            layers=1,
            seed_max=16,
            target_len=16,
            batch_size=8,
            epochs=50,
            max_steps=150,
            warmup_steps=5,
            eval_windows=32,
            device="cpu",
            threads=1,
            progress=False,
            version="tiny-corpus",
        )
    )
    return out
