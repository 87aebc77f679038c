"""The images and the compose file: their structure, their settings, and the exact commands they run.

No Docker engine is needed: the files are parsed, and the commands the containers run (migration,
health checks, bot, workers' argument lines) are run or parsed here, outside any container.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker/compose.yaml")

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# Where Debian/Ubuntu's fluid-soundfont-gm puts its soundfont.
SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
MOTIF_SERVICES = {"migrate", "bot", "worker-gpu", "worker-cpu", "flower"}
PG_ADMIN_URL = os.environ.get(
    "MOTIF_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# --- reading the files ----------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, RUN, ...
    args: str  # the rest, continuation lines joined


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Logical instructions: comments dropped, backslash continuations joined (Docker's rules)."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continuation too
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        pending = ""
        cmd, _, args = text.partition(" ")
        out.append(Instruction(cmd.upper(), " ".join(args.split())))
    assert not pending, f"{path.name} ends inside a continuation"
    return out


def stages(instructions: list[Instruction]) -> dict[str, list[Instruction]]:
    """Stage name (or its index) -> its instructions, FROM first."""
    result: dict[str, list[Instruction]] = {}
    current: list[Instruction] | None = None
    for ins in instructions:
        if ins.cmd == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(result))
            current = result[name] = [ins]
        elif current is not None:
            current.append(ins)
    return result


def lineage(stage_map: dict[str, list[Instruction]], name: str) -> list[Instruction]:
    """A stage's instructions including those of the stages it is built FROM."""
    own = stage_map[name]
    parent = own[0].args.split()[0]
    return (lineage(stage_map, parent) if parent in stage_map else []) + own


def last(instructions: list[Instruction], cmd: str) -> Instruction | None:
    found = [i for i in instructions if i.cmd == cmd]
    return found[-1] if found else None


def arg_default(instructions: list[Instruction], name: str) -> str:
    for ins in instructions:
        if ins.cmd == "ARG" and ins.args.startswith(f"{name}="):
            return ins.args.split("=", 1)[1].strip('"')
    raise AssertionError(f"no ARG {name}=default")


def env_value(instructions: list[Instruction], name: str) -> str | None:
    value = None
    for ins in instructions:
        if ins.cmd == "ENV":
            for m in re.finditer(r"(\w+)=(\S+)", ins.args):
                if m.group(1) == name:
                    value = m.group(2)
    return value


def healthcheck_command(instructions: list[Instruction]) -> list[str]:
    """The exec-form command after `HEALTHCHECK [options] CMD`."""
    hc = last(instructions, "HEALTHCHECK")
    assert hc is not None
    _, _, exec_form = hc.args.partition("CMD ")
    return json.loads(exec_form)


def exec_form(ins: Instruction | None) -> list[str]:
    assert ins is not None
    return json.loads(ins.args)


BOT = parse_dockerfile(DOCKER / "Dockerfile.bot")
WORKER = parse_dockerfile(DOCKER / "Dockerfile.worker")
BOT_STAGES = stages(BOT)
BOT_FINAL = lineage(BOT_STAGES, list(BOT_STAGES)[-1])
FLOWER = lineage(BOT_STAGES, "flower")


def load_compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


COMPOSE = load_compose()
SERVICES = COMPOSE["services"]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with no VAR set (what a fresh checkout gets)."""
    return re.sub(
        r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1)) or m.group(2), value
    )


def service_env(name: str) -> dict[str, str]:
    return {k: interpolate(str(v)) for k, v in SERVICES[name].get("environment", {}).items()}


def env_example_keys() -> set[str]:
    keys = set()
    for line in (ROOT / ".env.example").read_text().splitlines():
        m = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=", line.strip())
        if m:
            keys.add(m.group(1))
    return keys


def load_pyproject_deps():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("pyproject_deps", DOCKER / "pyproject_deps.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def clean_env(**values: str) -> dict[str, str]:
    """This machine's environment without any Motif setting, plus `values`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MOTIF_") and k not in ("DISCORD_TOKEN", "PYTHONPATH")
    }
    env.update(PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1", **values)
    return env


def run_in_container_style(argv: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run an image's command here: `python` and `motif` are this interpreter and `engine.cli`."""
    if argv[0] == "motif":
        argv = [sys.executable, "-m", "engine.cli", *argv[1:]]
    elif argv[0] == "python":
        argv = [sys.executable, *argv[1:]]
    return subprocess.run(
        argv, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=120
    )


# --- Dockerfiles ----------------------------------------------------------------------------


def test_bot_image_installs_the_package_without_torch():
    extras = arg_default(BOT, "MOTIF_EXTRAS").split(",")
    assert "worker" not in extras
    deps = load_pyproject_deps().requirements(str(ROOT / "pyproject.toml"), ",".join(extras))
    assert deps and not [d for d in deps if d.lower().startswith("torch")]
    runs = " ".join(i.args for i in BOT if i.cmd == "RUN")
    assert "pip install --no-deps -e ." in runs
    assert "[worker" not in runs and "download.pytorch.org" not in runs
    # ...and the build fails if torch crept in through some other dependency.
    assert "find_spec('torch')" in runs
    assert BOT_FINAL[0].args.split()[0] == "${PYTHON_IMAGE}" or "python:3.11" in BOT_FINAL[0].args
    assert arg_default(BOT, "PYTHON_IMAGE").startswith("python:3.11-slim")


def test_worker_image_has_cuda_torch_fluidsynth_and_a_soundfont():
    extras = arg_default(WORKER, "MOTIF_EXTRAS").split(",")
    assert "worker" in extras
    assert arg_default(WORKER, "CUDA_IMAGE").startswith("nvidia/cuda:12.")
    assert arg_default(WORKER, "TORCH_INDEX_URL").startswith("https://download.pytorch.org/whl/cu")
    runs = " ".join(i.args for i in WORKER if i.cmd == "RUN")
    assert '--index-url "${TORCH_INDEX_URL}"' in runs and "--only torch" in runs
    for package in ("python3.11", "python3.11-venv", "libfluidsynth3", "fluid-soundfont-gm"):
        assert re.search(rf"apt-get install[^&]*\b{re.escape(package)}\b", runs), package
    assert env_value(WORKER, "MOTIF_SOUNDFONT") == SOUNDFONT
    torch_line = load_pyproject_deps().requirements(
        str(ROOT / "pyproject.toml"), "worker", only="torch"
    )
    assert len(torch_line) == 1 and torch_line[0].startswith("torch")


@pytest.mark.parametrize(
    "name,instructions",
    [("bot", BOT_FINAL), ("flower", FLOWER), ("worker", WORKER)],
)
def test_images_run_as_a_non_root_user(name, instructions):
    user = last(instructions, "USER")
    assert user is not None, f"{name}: no USER"
    assert user.args.split(":")[0] not in ("root", "0")
    # The user exists, with the same uid in both images so the shared artifact volume works.
    runs = " ".join(i.args for i in instructions if i.cmd == "RUN")
    assert f"--uid 10001 --gid motif --create-home --home-dir /home/motif {user.args}" in runs
    assert "chown -R motif:motif /data" in runs


def test_bot_and_worker_images_have_healthchecks():
    assert healthcheck_command(BOT_FINAL) == ["python", "-m", "engine.health", "bot"]
    assert healthcheck_command(WORKER) == ["python", "-m", "engine.health", "worker"]
    for instructions in (BOT_FINAL, WORKER):
        assert exec_form(last(instructions, "ENTRYPOINT")) == ["motif-entrypoint"]
        assert env_value(instructions, "MOTIF_DATA_DIR") == "/data"


def test_image_commands_parse_with_motifs_cli():
    from engine.cli import build_parser

    bot = build_parser().parse_args(exec_form(last(BOT_FINAL, "CMD"))[1:])
    assert bot.func.__name__ == "cmd_bot"
    worker = build_parser().parse_args(exec_form(last(WORKER, "CMD"))[1:])
    assert (worker.func.__name__, worker.queues, worker.concurrency) == (
        "cmd_worker",
        "gpu,train",
        1,
    )


def test_build_copies_only_files_that_exist_and_are_let_through():
    for dockerfile, instructions in (("Dockerfile.bot", BOT), ("Dockerfile.worker", WORKER)):
        ignore = (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
        allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
        assert "**" in ignore, "the context starts from nothing"
        assert not {".env", ".venv", "var", ".git"} & allowed
        for ins in instructions:
            if ins.cmd != "COPY":
                continue
            sources = [w for w in ins.args.split() if not w.startswith("--")][:-1]
            for src in sources:
                assert (ROOT / src).exists(), f"{dockerfile}: COPY {src} is not in the repository"
                assert src in allowed, f"{dockerfile}: {src} is filtered out of the build context"


def test_pyproject_deps_reads_the_extras():
    deps = load_pyproject_deps()
    pyproject = str(ROOT / "pyproject.toml")
    base = deps.requirements(pyproject, "")
    assert any(d.startswith("celery") for d in base)
    assert set(base) < set(deps.requirements(pyproject, "worker,s3"))
    with pytest.raises(SystemExit, match="unknown extra"):
        deps.requirements(pyproject, "wroker")
    with pytest.raises(SystemExit, match="not required"):
        deps.requirements(pyproject, "s3", only="torch")


def test_entrypoint_restores_the_image_soundfont_and_execs(tmp_path):
    script = DOCKER / "entrypoint.sh"
    assert os.access(script, os.X_OK)
    assert SOUNDFONT in script.read_text()
    show = ["sh", str(script), "sh", "-c", 'echo "sf=$MOTIF_SOUNDFONT"; exit 7']
    kept = subprocess.run(
        show, env=clean_env(MOTIF_SOUNDFONT="/x.sf2"), capture_output=True, text=True
    )
    assert (kept.returncode, kept.stdout.strip()) == (7, "sf=/x.sf2")
    blank = subprocess.run(show, env=clean_env(MOTIF_SOUNDFONT=""), capture_output=True, text=True)
    expected = SOUNDFONT if Path(SOUNDFONT).exists() else ""
    assert (blank.returncode, blank.stdout.strip()) == (7, f"sf={expected}")


# --- compose --------------------------------------------------------------------------------


def test_compose_has_every_service():
    assert set(SERVICES) == {"postgres", "redis"} | MOTIF_SERVICES
    assert COMPOSE["name"] == "motif"


def test_postgres_and_redis_keep_their_data_and_report_health():
    volumes = set(COMPOSE["volumes"])
    assert {"pgdata", "redis-data", "artifacts"} <= volumes
    assert "pgdata:/var/lib/postgresql/data" in SERVICES["postgres"]["volumes"]
    for name in ("postgres", "redis"):
        assert SERVICES[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
        assert "ports" not in SERVICES[name], f"{name} must not be published on the host"


def test_redis_keeps_queued_messages_across_a_restart():
    command = SERVICES["redis"]["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in SERVICES["redis"]["volumes"]


def test_services_start_in_order():
    assert SERVICES["migrate"]["command"] == ["motif", "db", "upgrade"]
    assert SERVICES["migrate"]["restart"] == "no"
    assert SERVICES["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("bot", "worker-gpu", "worker-cpu"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"] == {"condition": "service_completed_successfully"}, name
        assert deps["postgres"] == deps["redis"] == {"condition": "service_healthy"}, name
    assert SERVICES["flower"]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_workers_consume_every_queue_and_the_gpu_worker_reserves_a_gpu():
    from engine.cli import build_parser
    from engine.queue.app import CPU_QUEUE, GPU_QUEUE, TRAIN_QUEUE

    parsed = {
        name: build_parser().parse_args(SERVICES[name]["command"][1:])
        for name in ("worker-gpu", "worker-cpu")
    }
    assert (parsed["worker-gpu"].queues, parsed["worker-gpu"].concurrency) == ("gpu,train", 1)
    assert parsed["worker-cpu"].queues == "cpu"
    consumed = {q for args in parsed.values() for q in args.queues.split(",")}
    assert consumed == {GPU_QUEUE, CPU_QUEUE, TRAIN_QUEUE}

    devices = SERVICES["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in SERVICES["worker-cpu"]
    assert service_env("worker-cpu")["MOTIF_DEVICE"] == "cpu"


def test_images_and_build_targets():
    def build(name: str) -> tuple[str, str | None]:
        b = SERVICES[name]["build"]
        assert b["context"] == ".."
        return b["dockerfile"], b.get("target")

    assert build("bot") == build("migrate") == ("docker/Dockerfile.bot", "bot")
    assert build("flower") == ("docker/Dockerfile.bot", "flower")
    assert build("worker-gpu") == build("worker-cpu") == ("docker/Dockerfile.worker", None)
    assert SERVICES["bot"]["image"] == SERVICES["migrate"]["image"]
    assert SERVICES["worker-gpu"]["image"] == SERVICES["worker-cpu"]["image"]
    assert {"bot", "flower"} <= set(BOT_STAGES) and list(BOT_STAGES)[-1] == "bot"


def test_every_setting_comes_from_env_with_the_services_addresses():
    from sqlalchemy.engine import make_url

    from engine.settings import Settings

    pg = SERVICES["postgres"]["environment"]
    for name in MOTIF_SERVICES - {"flower"}:  # Flower needs the broker only (next test)
        svc = SERVICES[name]
        assert svc["env_file"] == "../.env", name
        assert (DOCKER / svc["env_file"]).resolve() == ROOT / ".env"
        env = service_env(name)
        url = make_url(env["MOTIF_DATABASE_URL"])
        assert (url.drivername, url.host, url.port) == ("postgresql+psycopg", "postgres", 5432)
        assert (url.username, url.password, url.database) == (
            pg["POSTGRES_USER"],
            interpolate(pg["POSTGRES_PASSWORD"]),
            pg["POSTGRES_DB"],
        )
        assert env["MOTIF_BROKER_URL"] == "redis://redis:6379/0"
        assert env["MOTIF_RESULT_BACKEND"] == "redis://redis:6379/1"
        assert env["MOTIF_DATA_DIR"] == "/data"
        # The values are valid settings.
        s = Settings(
            _env_file=None, **{k.removeprefix("MOTIF_").lower(): v for k, v in env.items()}
        )
        assert s.sqlalchemy_url == env["MOTIF_DATABASE_URL"]


def test_each_service_gets_only_the_environment_it_needs():
    """Only the bot holds the Discord token; Flower gets neither .env nor the database URL."""
    for name in MOTIF_SERVICES - {"bot", "flower"}:
        env = service_env(name)
        assert env["DISCORD_TOKEN"] == "" and env["MOTIF_DISCORD_TOKEN"] == "", name
    assert "DISCORD_TOKEN" not in service_env("bot")  # from ../.env, as before
    flower = SERVICES["flower"]
    assert "env_file" not in flower
    assert set(service_env("flower")) == {"MOTIF_BROKER_URL", "MOTIF_RESULT_BACKEND"}


def test_bot_and_workers_share_the_artifact_volume_at_the_default_artifact_folder():
    for name in ("bot", "worker-gpu", "worker-cpu"):
        data_dir = service_env(name)["MOTIF_DATA_DIR"]
        # MOTIF_ARTIFACT_URL empty (as in .env.example) means <data dir>/artifacts.
        assert f"artifacts:{data_dir}/artifacts" in SERVICES[name]["volumes"], name


def test_every_motif_setting_named_in_the_docker_files_is_documented():
    documented = env_example_keys()
    text = "\n".join(
        p.read_text()
        for p in (
            DOCKER / "compose.yaml",
            DOCKER / "Dockerfile.bot",
            DOCKER / "Dockerfile.worker",
            DOCKER / "entrypoint.sh",
        )
    )
    named = set(re.findall(r"\b(MOTIF_[A-Z0-9_]+|DISCORD_TOKEN)\b", text))
    # MOTIF_EXTRAS is a build argument of the images, not a setting of the program.
    named.discard("MOTIF_EXTRAS")
    # the token's alias, blanked for the services that must not hold it (DISCORD_TOKEN is there)
    named.discard("MOTIF_DISCORD_TOKEN")
    assert named, "nothing found"
    assert named <= documented, f"not in .env.example: {sorted(named - documented)}"


def test_flower_runs_celery_flower_on_motifs_app():
    cmd = SERVICES["flower"]["command"]
    assert cmd == exec_form(last(FLOWER, "CMD"))
    assert cmd[:4] == ["celery", "-A", "engine.worker.app", "flower"] and "--port=5555" in cmd
    assert SERVICES["flower"]["ports"] == ["127.0.0.1:5555:5555"]
    from celery import Celery

    import engine.worker.app

    assert isinstance(engine.worker.app.app, Celery)


# --- the commands, run here -----------------------------------------------------------------


def insert_worker_row(url: str, hostname: str, age_s: float) -> None:
    from engine.store.db import session_scope
    from engine.store.records import Worker, utcnow

    with session_scope(url) as session:
        session.add(
            Worker(
                hostname=hostname,
                queues="gpu,train",
                device="cpu",
                pid=4242,
                last_seen=utcnow() - timedelta(seconds=age_s),
            )
        )


def test_migration_then_worker_healthcheck_on_sqlite(tmp_path):
    from engine.health import health
    from engine.settings import Settings
    from engine.store import db

    url = f"sqlite:///{tmp_path / 'motif.db'}"
    env = {"MOTIF_DATABASE_URL": url, "MOTIF_DATA_DIR": str(tmp_path / "data")}
    migrate = run_in_container_style(SERVICES["migrate"]["command"], tmp_path, **env)
    assert migrate.returncode == 0, migrate.stderr
    head = db.head_revision(url)
    assert f"revision {head} (head {head})" in migrate.stdout

    settings = Settings(_env_file=None, database_url=url, data_dir=tmp_path / "data")
    assert health(settings, "worker") == 1  # no presence row yet

    # The row a `motif worker` in this container writes: Celery's node name `...@%h`.
    insert_worker_row(url, f"motif-gpu-train-7@{socket.gethostname()}", age_s=1)
    check = run_in_container_style(healthcheck_command(WORKER), tmp_path, **env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("healthy (worker):") and check.stdout.count("\n") == 1


def test_health_reasons(tmp_path, capsys):
    from engine.health import health
    from engine.settings import Settings
    from engine.store import db

    url = f"sqlite:///{tmp_path / 'h.db'}"
    settings = Settings(_env_file=None, database_url=url, data_dir=tmp_path / "data")

    assert health(settings, "db") == 1
    assert "run `motif db upgrade`" in capsys.readouterr().out
    db.upgrade(url)
    assert health(settings, "worker") == 1
    assert capsys.readouterr().out.startswith("unhealthy (worker): no worker row for host")
    assert health(settings, "db") == 0
    assert health(settings, "bot") == 0
    capsys.readouterr()

    # Another machine's worker does not make this one healthy; a stale row does not either.
    insert_worker_row(url, "motif-gpu-train-1@some-other-host", age_s=0)
    insert_worker_row(
        url, f"motif-cpu-2@{socket.gethostname()}", age_s=settings.worker_heartbeat_s * 5
    )
    assert health(settings, "worker") == 1
    assert "last beat" in capsys.readouterr().out

    dead_broker = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    assert health(dead_broker, "bot") == 1
    assert "broker unreachable" in capsys.readouterr().out

    dead_db = settings.model_copy(update={"database_url": "postgresql+psycopg://x@127.0.0.1:1/x"})
    assert health(dead_db, "db") == 1
    assert "unreachable" in capsys.readouterr().out

    assert health(settings, "nonsense") == 1  # type: ignore[arg-type]


def test_bot_command_without_a_token_exits_2_with_the_reason(tmp_path):
    result = run_in_container_style(SERVICES["bot"]["command"], tmp_path)
    assert result.returncode == 2
    assert "DISCORD_TOKEN is not set" in result.stderr


@pytest.fixture
def pg_database_url():
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    from tests.conftest import port_open

    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (set MOTIF_TEST_PG_URL)")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"motif_docker_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.skip(f"cannot create a database on {PG_ADMIN_URL}: {exc}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        from engine.store import db

        for url, engine in list(db._engines.items()):
            if name in url:
                engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.services
def test_migration_then_bot_healthcheck_on_postgres(tmp_path, pg_database_url, monkeypatch):
    from engine.cli import main
    from engine.settings import get_settings

    env = {"MOTIF_DATABASE_URL": pg_database_url, "MOTIF_DATA_DIR": str(tmp_path / "data")}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)  # no developer's .env
    get_settings.cache_clear()
    try:
        # The migration runs on every `up`, so it must also succeed on a migrated database.
        assert main(SERVICES["migrate"]["command"][1:]) == 0
        assert main(SERVICES["migrate"]["command"][1:]) == 0
    finally:
        get_settings.cache_clear()

    check = run_in_container_style(healthcheck_command(BOT_FINAL), tmp_path, **env)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("healthy (bot): database postgresql+psycopg://")
