"""The whole path with real parts: queue → worker process → model → audio → SQL rows."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

from engine.service.requests import JobService, Requester, validate_options
from engine.store import db
from engine.store.db import session_scope
from engine.store.records import Artifact, Request, RequestStatus
from engine.worker.process import live_workers
from tests.conftest import (
    ROOT,
    example_seed_bytes,
    make_settings,
    run_motif,
    settings_env,
    wait_finished,
)

pytestmark = pytest.mark.slow


def check_artifacts(service: JobService, rid: int) -> None:
    import pretty_midi
    import soundfile

    prog = service.progress(rid)
    assert prog.status is RequestStatus.DONE, prog.error_user
    kinds = {a.kind: a for a in prog.artifacts}
    assert set(kinds) == {"midi", "audio", "image", "score", "musicxml", "pdf"}
    midi = pretty_midi.PrettyMIDI(io.BytesIO(service.artifact_bytes(kinds["midi"])))
    assert sum(len(i.notes) for i in midi.instruments) > 0
    data, rate = soundfile.read(io.BytesIO(service.artifact_bytes(kinds["audio"])))
    assert rate > 0 and len(data) > rate  # at least a second of sound
    assert service.artifact_bytes(kinds["image"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert service.artifact_bytes(kinds["score"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert kinds["score"].filename == f"motif-{rid}-score.png"
    assert service.artifact_bytes(kinds["pdf"])[:5] == b"%PDF-"
    assert kinds["pdf"].filename == f"motif-{rid}.pdf"
    xml = service.artifact_bytes(kinds["musicxml"])
    assert b"<score-partwise" in xml and kinds["musicxml"].filename == f"motif-{rid}.musicxml"
    assert prog.model_version == "tiny-test" or prog.model_version.startswith("motif-default-")
    assert prog.timings["generate_s"] > 0 and prog.timings["render_s"] > 0
    with session_scope(service.url) as s:
        assert s.scalar(select(func.count(Artifact.id)).where(Artifact.request_id == rid)) == 6


def _compose(service: JobService, seed: bool = True, **options) -> int:
    return service.compose(
        Requester(discord_id=1, name="t"),
        validate_options(bars=options.pop("bars", 4), **options),
        example_seed_bytes() if seed else None,
        "ode-to-joy.mid" if seed else "",
    )


def test_compose_through_a_real_worker_on_embedded_defaults(
    tmp_path, tiny_model_path, worker_factory
):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, user_max_concurrent=5)
    db.upgrade(settings.sqlalchemy_url)
    assert settings.celery_broker_url == "filesystem://"
    worker_factory(settings).start()
    service = JobService(settings)
    with_seed = _compose(service)
    no_seed = _compose(service, seed=False, style="folk")
    for rid in (with_seed, no_seed):
        wait_finished(service, rid, timeout=120)
        check_artifacts(service, rid)


@pytest.mark.services
def test_compose_with_redis_broker_and_postgres(
    tmp_path, tiny_model_path, worker_factory, pg_url, redis_url
):
    settings = make_settings(
        tmp_path,
        default_model_path=tiny_model_path,
        database_url=pg_url,
        broker_url=redis_url,
        result_backend=redis_url,
    )
    db.upgrade(settings.sqlalchemy_url)
    worker_factory(settings, queues="gpu,train").start()
    worker_factory(settings, queues="cpu").start()  # a separate render worker, as at scale
    service = JobService(settings)
    rid = _compose(service)
    wait_finished(service, rid, timeout=120)
    check_artifacts(service, rid)


@pytest.mark.services
def test_compose_with_rabbitmq_broker(tmp_path, tiny_model_path, worker_factory, amqp_url):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path, broker_url=amqp_url)
    db.upgrade(settings.sqlalchemy_url)
    worker_factory(settings).start()
    service = JobService(settings)
    rid = _compose(service)
    wait_finished(service, rid, timeout=120)
    check_artifacts(service, rid)


def test_kill_9_mid_job_completes_once_after_a_new_worker_comes(
    tmp_path, tiny_model_path, worker_factory
):
    # batch_wait_ms holds the claimed job in `generating` long enough to kill the worker there.
    settings = make_settings(
        tmp_path,
        default_model_path=tiny_model_path,
        batch_wait_ms=3000,
        stale_after_s=3.0,
    )
    db.upgrade(settings.sqlalchemy_url)
    first = worker_factory(settings).start()
    service = JobService(settings)
    rid = _compose(service)
    deadline = time.monotonic() + 60
    while service.progress(rid).status is not RequestStatus.GENERATING:
        assert time.monotonic() < deadline, first.tail()
        time.sleep(0.05)
    first.kill9()
    assert service.progress(rid).status is RequestStatus.GENERATING  # stranded
    worker_factory(settings).start()  # its reaper re-queues the stale job
    prog = wait_finished(service, rid, timeout=120)
    assert prog.status is RequestStatus.DONE
    check_artifacts(service, rid)
    with session_scope(settings.sqlalchemy_url) as s:
        assert s.get(Request, rid).attempts == 2
    # one set of files, all of the attempt that finished (each attempt writes under its own
    # key: the killed one wrote nothing that was kept)
    base = settings.data_dir / "artifacts" / "requests" / str(rid)
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
    assert files == sorted(
        [f"attempt-2/motif-{rid}{end}" for end in (".mid", ".ogg", ".png", "-score.png")]
        + [f"attempt-2/motif-{rid}{end}" for end in (".musicxml", ".pdf")]
        + [
            "seed.json"
        ]  # the seed as submitted (engine.service.request_seeds), read by both attempts
    )


def test_motif_compose_cli_writes_midi_audio_pictures_and_musicxml(tmp_path, tiny_model_path):
    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    out = tmp_path / "result"
    seed = ROOT / "engine" / "data" / "examples" / "ode-to-joy.mid"
    proc = run_motif(settings, "compose", str(seed), "--bars", "4", "--out", str(out), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stages = [line.split()[0] for line in proc.stdout.splitlines() if line.startswith("  ")]
    stages = list(
        dict.fromkeys(s for s in stages if s in {"queued", "generating", "rendering", "done"})
    )
    # every stage shows, in order, even one shorter than the CLI's poll
    assert stages == ["queued", "generating", "rendering", "done"], proc.stdout
    assert "done in" in proc.stdout
    # nothing from the libraries' chatter: alembic's dialect lines, kombu's missing host name
    assert "alembic" not in proc.stderr and "kombu" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"motif-1{end}" for end in (".mid", ".ogg", ".png", "-score.png", ".musicxml", ".pdf")
    )
    # the CLI's own worker left before the CLI returned: a next `motif compose` starts its own
    assert live_workers(settings) == []


def test_motif_compose_cli_rejects_bad_options_before_queuing(tmp_path):
    settings = make_settings(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "compose", "--bars", "0"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "bars must be" in proc.stderr
    assert not (settings.data_dir / "motif.db").exists()


def test_render_worker_refuses_to_start_with_a_missing_soundfont(tmp_path):
    settings = make_settings(tmp_path, soundfont=str(tmp_path / "nope.sf2"))
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "worker", "-Q", "cpu"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "MOTIF_SOUNDFONT" in proc.stderr


def test_motif_compose_cli_refuses_a_corrupt_seed_before_starting_anything(tmp_path):
    settings = make_settings(tmp_path)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"MThd garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "compose", str(bad)],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "not a valid MIDI file" in proc.stderr
    assert "starting a local worker" not in proc.stdout
    assert not (settings.data_dir / "motif.db").exists()


def test_motif_status_on_a_fresh_database(tmp_path):
    settings = make_settings(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "status"],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(
        "queued 0, running 0, active model the shipped default (not registered yet)"
    ), proc.stdout


def test_motif_cancel_withdraws_a_queued_cli_request_and_no_worker_runs_it(
    tmp_path, tiny_model_path, worker_factory
):
    """`motif compose` waits (no worker yet); `motif cancel 1` withdraws its request; the
    waiting command ends saying so; a worker started afterwards skips it and serves the next."""
    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    db.upgrade(settings.sqlalchemy_url)

    def motif(*args: str, **kw) -> subprocess.Popen[str]:  # type: ignore[no-untyped-def]
        return subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args], env=settings_env(settings), cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
        )  # fmt: skip

    waiting = motif("compose", "--no-worker", "--bars", "2", "--timeout", "120")
    service = JobService(settings)
    deadline = time.monotonic() + 60
    while True:
        with session_scope(settings.sqlalchemy_url) as s:
            if s.get(Request, 1) is not None:
                break
        assert time.monotonic() < deadline and waiting.poll() is None
        time.sleep(0.1)
    other = service.compose(Requester(discord_id=9, name="d"), validate_options(bars=2), None)
    out, err = motif("cancel", str(other)).communicate(timeout=60)
    assert "only the person who asked" in err  # the command line cancels its own requests only
    out, err = motif("cancel", "1").communicate(timeout=60)
    assert out.strip() == "request #1 cancelled", err
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1 and "request #1 cancelled" in err, out + err
    assert service.progress(1).status is RequestStatus.CANCELLED

    worker_factory(settings).start()
    wait_finished(service, other, timeout=120)
    check_artifacts(service, other)
    assert service.progress(1).status is RequestStatus.CANCELLED
    assert service.progress(1).artifacts == [] and service.progress(1).model_version is None
    again = motif("cancel", "1")
    _, err = again.communicate(timeout=60)
    assert again.returncode == 1 and "cannot be cancelled now" in err


@pytest.mark.parametrize("suffix", [".abc", ".musicxml"])
def test_motif_compose_cli_takes_abc_and_musicxml_seeds(tmp_path, tiny_model_path, suffix):
    from engine.music.midi import load_seed
    from engine.music.musicxml import score_xml
    from engine.music.notes import Note, Piece
    from tests.engine.music.test_notation_seeds import TWO_TUNES

    settings = make_settings(tmp_path, default_model_path=tiny_model_path)
    if suffix == ".abc":
        data, metre = TWO_TUNES, (6, 8)
    else:
        waltz = Piece(tuple(Note(float(i), 1.0, 64 + i % 5) for i in range(12)), 90.0, (3, 4))
        data, metre = score_xml(waltz, Piece(()), key=(9, "minor")).encode(), (3, 4)
    tune = tmp_path / f"tune{suffix}"
    tune.write_bytes(data)
    out = tmp_path / "result"
    proc = run_motif(settings, "compose", str(tune), "--bars", "2", "--out", str(out), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"(tune{suffix}, 2 bars)" in proc.stdout
    if suffix == ".abc":
        assert "note: The ABC held 2 tunes; Motif continued the first one." in proc.stdout
    assert (out / "motif-1.musicxml").exists() and (out / "motif-1-score.png").exists()
    result = load_seed((out / "motif-1.mid").read_bytes())
    assert result.time_signature == metre  # the seed's metre carried through


def test_motif_compose_cli_refuses_hostile_xml_before_starting_anything(tmp_path):
    from tests.engine.music.test_notation_seeds import BILLION_LAUGHS

    settings = make_settings(tmp_path)
    tune = tmp_path / "bomb.musicxml"
    tune.write_bytes(BILLION_LAUGHS)
    proc = run_motif(settings, "compose", str(tune), timeout=60)
    assert proc.returncode == 2 and "declares XML entities" in proc.stderr
    assert not (settings.data_dir / "motif.db").exists()
