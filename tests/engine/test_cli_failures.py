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
