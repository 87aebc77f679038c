"""`motif` fails in one line with a documented exit code, and `motif compose` never waits on a
worker that is gone."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, make_settings, settings_env
from tests.conftest import run_motif as motif


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The failure's one line (an INFO log line such as "creating a new database" may precede
    it; no warning, error or traceback may)."""
    lines = [
        line
        for line in proc.stderr.strip().splitlines()
        if not re.match(r"\d{4}-\d\d-\d\d [\d:,]+ INFO ", line)
    ]
    assert len(lines) == 1 and lines[0].startswith("motif: "), proc.stderr
    return lines[0]


def test_db_upgrade_with_the_database_unreachable_is_one_line_rc_2(tmp_path):
    settings = make_settings(tmp_path, database_url="postgresql+psycopg://x@127.0.0.1:1/none")
    proc = motif(settings, "db", "upgrade")
    assert proc.returncode == 2
    assert "unreachable" in one_line(proc) and "127.0.0.1:1" in proc.stderr


@pytest.mark.parametrize("command", [["status"], ["compose", "--no-worker"], ["worker"]])
def test_a_data_folder_that_cannot_be_created_is_one_line_naming_it(tmp_path, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    settings = make_settings(tmp_path, data_dir=blocker / "var")
    proc = motif(settings, *command)
    assert proc.returncode == 2, proc.stderr
    assert str(blocker / "var") in one_line(proc)


def test_a_huge_seed_is_refused_before_it_is_read(tmp_path):
    settings = make_settings(tmp_path)
    seed = tmp_path / "huge.mid"
    with open(seed, "wb") as fh:
        fh.truncate(1 << 40)  # 1 TiB, sparse: reading it whole could not finish
    proc = motif(settings, "compose", str(seed), timeout=60)
    assert proc.returncode == 2 and "too large" in one_line(proc)
    assert not (settings.data_dir / "motif.db").exists()


def test_an_unreachable_broker_says_the_request_is_saved(tmp_path):
    settings = make_settings(tmp_path, broker_url="redis://127.0.0.1:1/0")
    proc = motif(settings, "compose", "--no-worker", "--style", "folk")
    assert proc.returncode == 2
    assert "queue is unreachable" in one_line(proc) and "#1 is saved" in proc.stderr


def test_a_bad_setting_is_one_line_naming_it(tmp_path):
    settings = make_settings(tmp_path)
    env = settings_env(settings) | {"MOTIF_TORCH_THREADS": "many"}
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "status"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "MOTIF_TORCH_THREADS" in one_line(proc)


def motif_with(tmp_path, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    """`motif ARGV…` with the test's settings and the variables `env` on top."""
    return subprocess.run(
        [sys.executable, "-m", "engine.cli", *argv],
        env=settings_env(make_settings(tmp_path)) | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


# Each bad setting of issue #26 (they exited 70, or were accepted), with the commands it broke.
BAD_SETTINGS = [
    ("MOTIF_DATABASE_URL", "notaurl", ["db", "upgrade"], "postgresql"),
    ("MOTIF_DATABASE_URL", "mysql://motif:hunter2@db/motif", ["db", "upgrade"], "sqlite"),
    ("MOTIF_DATABASE_URL", "postgresql+psycopg2://x@db/m", ["status"], "not installed"),
    ("MOTIF_BROKER_URL", "foo://bar", ["worker"], "redis://"),
    ("MOTIF_BROKER_URL", "foo://bar", ["compose", "--no-worker"], "redis://"),
    ("MOTIF_BROKER_URL", "notaurl", ["compose", "--no-worker"], "amqp://"),
    ("MOTIF_BROKER_URL", "redis://:hunter2@", ["status"], "no host"),
    ("MOTIF_RESULT_BACKEND", "foo://bar", ["status"], "db+sqlite"),
    ("MOTIF_RESULT_BACKEND", "foo://bar", ["worker"], "db+sqlite"),
    ("MOTIF_ARTIFACT_URL", "nosuch://bucket/x", ["status"], "s3://"),
    ("MOTIF_LOG_LEVEL", "LOUD", ["status"], "WARNING"),
]


@pytest.mark.parametrize(("name", "value", "command", "accepted"), BAD_SETTINGS)
def test_each_bad_setting_is_exit_2_naming_it_and_what_is_accepted(
    tmp_path, name, value, command, accepted
):
    proc = motif_with(tmp_path, {name: value}, *command)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert line.startswith(f"motif: bad setting {name}=") and "accepted" in line
    assert accepted in line
    assert "hunter2" not in proc.stderr  # the value is shown with its password hidden
    if "hunter2" in value:
        assert "***" in line
    else:
        assert value in line
    assert not (tmp_path / "var").exists()  # refused before anything was written


def test_a_file_where_the_data_folder_goes_is_a_bad_setting(tmp_path):
    (tmp_path / "a-file").write_text("a file")
    proc = motif_with(tmp_path, {"MOTIF_DATA_DIR": str(tmp_path / "a-file")}, "status")
    assert proc.returncode == 2
    assert "MOTIF_DATA_DIR" in one_line(proc) and "not a folder" in one_line(proc)


@pytest.mark.parametrize("which", ["broker_url", "result_backend"])
def test_status_with_an_unreachable_broker_or_backend_exits_2_saying_which(tmp_path, which):
    settings = make_settings(tmp_path, **{which: "redis://:hunter2@127.0.0.1:1/0"})
    proc = motif(settings, "status")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_line(proc)
    what = "broker" if which == "broker_url" else "result backend"
    assert line.startswith(f"motif: {what} unreachable") and "127.0.0.1:1" in line
    assert "hunter2" not in proc.stdout + proc.stderr


def test_status_with_everything_reachable_exits_0(tmp_path):
    proc = motif(make_settings(tmp_path), "status")
    assert proc.returncode == 0, proc.stderr
    assert "broker filesystem://" in proc.stdout and "result backend db+sqlite" in proc.stdout


def _read_only_folder(tmp_path) -> Path:
    """A folder this process cannot write to: a 0555 folder, or (as root, who writes there
    anyway) /sys/fs, which the kernel refuses."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        folder = Path("/sys/fs")
    try:
        (folder / "probe").open("a").close()
    except OSError:
        return folder
    pytest.skip(f"no read-only folder to test with ({folder} is writable)")


def test_db_upgrade_on_a_read_only_data_folder_is_one_line_rc_2(tmp_path):
    folder = _read_only_folder(tmp_path)
    proc = motif(make_settings(tmp_path, data_dir=folder), "db", "upgrade")
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert f"database folder {folder} cannot be written" in line
    assert not list(folder.glob("motif.db*"))


@pytest.mark.slow
def test_compose_starts_a_new_worker_when_its_worker_is_gone(tmp_path, tiny_model_path):
    # batch_wait_ms keeps the request in `generating` long enough to kill its worker there.
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, batch_wait_ms=3000)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "compose", "--style", "folk", "--bars", "2",
         "--out", str(tmp_path / "out"), "--timeout", "150"],
        env=settings_env(settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    state = settings.data_dir / "local-worker.json"
    deadline = time.monotonic() + 120
    pid = None
    while pid is None:
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        with contextlib.suppress(OSError, ValueError):
            pid = json.loads(state.read_text()).get("pid")
        time.sleep(0.2)
    log = settings.data_dir / "worker.log"
    while "ready" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(pid, signal.SIGKILL)  # the whole worker: its message is lost with it
    out, err = proc.communicate(timeout=170)
    assert proc.returncode == 0, out + err
    assert "a new one is running" in out
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [
        ".mid",
        ".musicxml",
        ".ogg",
        ".pdf",
        ".png",
        ".png",
    ]


def test_compose_whose_local_worker_cannot_start_says_why_in_one_line(tmp_path):
    settings = make_settings(tmp_path, soundfont=str(tmp_path / "missing.sf2"))
    proc = motif(settings, "compose", "--style", "folk", timeout=180)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "did not start" in line and "MOTIF_SOUNDFONT" in line
