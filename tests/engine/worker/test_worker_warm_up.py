"""What a real worker process loads before its first job, and what it says about itself."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from engine.service.requests import JobService
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import ModelVersion, Worker
from tests.conftest import make_settings

pytestmark = pytest.mark.slow

READY = "worker process ready"


def _wait_for_line(worker, text: str, timeout: float = 60.0) -> str:
    """The worker's log line holding `text`; "" if none came within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = worker.log.read_text(errors="replace")
        if text in log:
            return next(line for line in log.splitlines() if text in line)
        assert worker.proc.poll() is None, worker.tail()
        time.sleep(0.2)
    return ""


def _device_of(settings, queues: str) -> str | None:
    with session_scope(settings.sqlalchemy_url) as s:
        return s.scalar(select(Worker.device).where(Worker.queues == queues))


def test_a_render_worker_loads_no_model_and_a_gpu_worker_names_its_real_device(
    tmp_path, tiny_model_path, worker_factory
):
    import torch

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    assert settings.device == "auto"
    db.upgrade(settings.sqlalchemy_url)

    render = worker_factory(settings, queues="cpu").start()
    line = _wait_for_line(render, READY)
    assert "loading model" not in render.log.read_text()
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count(ModelVersion.id))) == 0  # nothing registered either
    assert "queues cpu;" in line and "model none" in line and "renderer " in line
    assert "SoundFont " in line and str(settings.soundfont_path) in line
    assert _device_of(settings, "cpu") == "cpu"

    gpu = worker_factory(settings, queues="gpu,train").start()
    line = _wait_for_line(gpu, READY)
    # `cpu` here; `cuda:0 <name>` on a machine with a GPU
    expected = (
        f"cuda:0 {torch.cuda.get_device_name(0)}"[:32] if torch.cuda.is_available() else "cpu"
    )
    deadline = time.monotonic() + 10
    while _device_of(settings, "gpu,train") != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _device_of(settings, "gpu,train") == expected  # never the setting, "auto"
    assert f"on {expected};" in line and "renderer none" in line
    shown = JobService(settings).queue_status().workers
    assert any(w.endswith(f"[gpu,train] on {expected}") for w in shown), shown
