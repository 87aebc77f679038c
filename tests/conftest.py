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
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from engine.settings import Settings
from engine.store import db

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


# The tests build their settings from their own temporary paths alone: a developer's MOTIF_*
# variables (say, a production MOTIF_DATABASE_URL) must never reach them. MOTIF_TEST_* stay:
# they say where this machine's test services are.
for _name in [n for n in os.environ if n.startswith("MOTIF_") and not n.startswith("MOTIF_TEST_")]:
    del os.environ[_name]


class IsolatedSettings(Settings):
    """Settings from the values given and the defaults: no environment, no `.env` file."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


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
    return IsolatedSettings(**values)  # type: ignore[arg-type]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker subprocess needs to see the same Motif as the test (and
    nothing else: MOTIF_ENV_FILE empty, so the child reads no `.env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOTIF_")}
    env["MOTIF_ENV_FILE"] = ""
    for name, value in settings.model_dump(exclude={"discord_token"}).items():
        if value is None or value == "":
            continue
        env[f"MOTIF_{name.upper()}"] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_motif(
    settings: Settings, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`motif ARGV…` as a user runs it, with the test's settings and nothing else."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torch-threads",
        default="1",
        help="torch threads for the engine's tests: a number, or 'default' for torch's own "
        "choice (the machine's cores); CI runs the numerical tests both ways",
    )


def torch_threads(config: pytest.Config) -> int | None:
    """The thread count the tests run torch at; None leaves torch's default."""
    value = str(config.getoption("--torch-threads"))
    return None if value == "default" else int(value)


@pytest.fixture
def one_torch_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tiny models on one torch thread: extra threads only contend for the shared cores.
    `--torch-threads default` runs them at the machine's default count instead.
    (torch is imported here, not at the top: the bot's tests run without it.)"""
    import torch

    before = torch.get_num_threads()
    threads = torch_threads(request.config)
    if threads is not None:
        torch.set_num_threads(threads)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path)
    db.upgrade(s.sqlalchemy_url)
    return s


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A database of the test's own, created with a unique name on the server of PG_URL and
    dropped afterwards; nothing else on that server is touched."""
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set MOTIF_TEST_PG_URL)")
    from sqlalchemy import create_engine, make_url, text

    name = f"motif_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"PostgreSQL at {PG_URL} cannot create a test database: {exc}")
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        from engine.store.db import _engines

        for known in [u for u in _engines if u == url]:
            _engines.pop(known).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def redis_url() -> str:
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (set MOTIF_TEST_REDIS_URL)")
    # No FLUSHDB: this Redis database is shared with whoever else tests on this machine. A
    # leftover message of another run names a row of another database; the worker's claims are
    # compare-and-sets on its own rows, so it changes nothing. (Two runs at the same moment
    # still share the queue names: see docs/testing.md.)
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
        from engine.worker.process import wait_worker_ready

        assert self.proc is not None
        wait_worker_ready(self.settings, self.proc, timeout, self.tail)

    def kill9(self) -> None:
        import signal

        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        from engine.worker.process import stop_worker_process

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


# The tiny models' size and training set-up (CPU, one thread, quiet); each fixture adds its data.
TINY_TRAINING: dict[str, object] = dict(
    d_embed=32, hidden=48, layers=1, seed_max=16, target_len=16, batch_size=8, warmup_steps=5,
    device="cpu", threads=1, progress=False,
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for a few steps with the real training code (not the shipped one)."""
    from engine.model.train.config import TrainConfig
    from engine.model.train.train import train

    out = tmp_path_factory.mktemp("tiny-model") / "tiny.pt"
    pieces = synthetic_pieces()
    train(
        TrainConfig(
            out=out,
            corpus_path=None,
            pieces=pieces[:20],
            val_pieces=pieces[20:],
            test_pieces=pieces[20:],
            epochs=1,
            max_steps=30,
            eval_windows=16,
            version="tiny-test",
            **TINY_TRAINING,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_corpus_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real corpus built by the real corpus code from music21's bundled files."""
    from engine.model.corpus.build import build_corpus

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
    from engine.model.train.config import TrainConfig
    from engine.model.train.train import train

    out = tmp_path_factory.mktemp("tiny-corpus-model") / "tiny-corpus.pt"
    train(
        TrainConfig(
            out=out,
            corpus_path=tiny_corpus_path,
            epochs=50,
            max_steps=150,
            eval_windows=32,
            version="tiny-corpus",
            **TINY_TRAINING,
        )
    )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A `redis-server` of the test's own on a free port (no persistence: a restart is empty),
    so a test may kill it without touching the machine's shared Redis."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> OwnRedis:
        import shutil

        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not port_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def length(self, queue: str) -> int:
        import redis

        return int(redis.Redis.from_url(self.url).llen(queue))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.kill9()


@pytest.fixture
def own_pg_database(pg_url: str) -> tuple[str, str]:
    """A Postgres database of this test's own (`pg_url`'s), with its name."""
    from sqlalchemy import make_url

    return pg_url, str(make_url(pg_url).database)
