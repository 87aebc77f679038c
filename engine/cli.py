"""`motif`: compose from the command line, run workers, manage the database, models and bot."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from engine.errors import MotifError
from engine.settings import PACKAGE_DIR, Settings, get_settings

log = logging.getLogger("motif")

EXAMPLE_SEED = PACKAGE_DIR / "data" / "examples" / "ode-to-joy.mid"


# --- compose --------------------------------------------------------------------------------


def live_workers(settings: Settings) -> list[str]:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.records import Worker, utcnow

    since = utcnow() - timedelta(seconds=settings.worker_heartbeat_s * 4)
    with session_scope(settings.sqlalchemy_url) as session:
        return [w.queues for w in session.scalars(select(Worker).where(Worker.last_seen >= since))]


def wait_worker_ready(
    settings: Settings, proc: subprocess.Popen, timeout: float, log_tail: Callable[[], str]
) -> None:
    """Wait until a worker started for `settings` has registered; RuntimeError if it exits
    first, TimeoutError after `timeout` s (both with the end of its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_tail()}")
        if live_workers(settings):
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready: {log_tail()}")


def _wait_deregistered(settings: Settings, proc: subprocess.Popen, timeout: float) -> bool:
    from sqlalchemy import select

    from engine.db import session_scope
    from engine.records import Worker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with session_scope(settings.sqlalchemy_url) as session:
            if session.scalar(select(Worker.id).where(Worker.pid == proc.pid)) is None:
                return True
        time.sleep(0.05)
    return proc.poll() is not None


def start_worker_process(settings: Settings, queues: str = "gpu,cpu,train") -> subprocess.Popen:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    logfile = open(settings.data_dir / "worker.log", "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "worker", "-Q", queues],
        stdout=logfile,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker_process(
    proc: subprocess.Popen, *, settings: Settings | None = None, timeout: float = 10.0
) -> None:
    """Warm-stop a worker started by `start_worker_process` (SIGTERM to its main process, which
    stops its own children), SIGKILL for the whole group after `timeout` s.

    With `settings`, return as soon as the worker has deregistered (it takes no new work from
    then on) and let it finish shutting down on its own: Celery's shutdown takes ~7 s."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        if settings is not None and _wait_deregistered(settings, proc, timeout):
            return
        proc.wait(timeout=timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


def cmd_compose(args: argparse.Namespace) -> int:
    from engine.db import ensure_schema
    from engine.jobs import JobService, Requester, validate_options
    from engine.records import RequestStatus

    settings = get_settings()
    options = validate_options(
        bars=args.bars,
        style=args.style,
        temperature=args.temperature,
        top_p=args.top_p,
        instrument=args.instrument,
        tempo=args.tempo,
        rng_seed=args.rng_seed,
        settings=settings,
        from_bar=args.from_bar,
    )
    seed_bytes = None
    seed_name = ""
    if args.seed:
        path = Path(args.seed)
        if not path.is_file():
            print(f"motif: no such seed file: {path}", file=sys.stderr)
            return 2
        seed_bytes = path.read_bytes()
        seed_name = path.name
        from engine.midi_io import load_seed, seed_notices

        # a bad file is refused before anything starts
        seed = load_seed(seed_bytes, name=seed_name, from_bar=options.from_bar)
        for notice in seed_notices(seed).values():
            print(f"  note: {notice}")
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    started = time.perf_counter()
    proc = None
    if not args.no_worker and not any("gpu" in q for q in live_workers(settings)):
        print("starting a local worker (log: %s)" % (settings.data_dir / "worker.log"))
        proc = start_worker_process(settings)
    try:
        service = JobService(settings)
        rid = service.compose(Requester(origin="cli", name="cli"), options, seed_bytes, seed_name)
        print(f"request #{rid} queued ({seed_name or 'no seed'}, {options.bars} bars)")
        last = None
        order = [RequestStatus.QUEUED, RequestStatus.GENERATING, RequestStatus.RENDERING]
        order.append(RequestStatus.DONE)
        reached = 0  # how many stages of `order` have been printed
        deadline = time.monotonic() + args.timeout
        while True:
            prog = service.progress(rid)
            shown = (prog.status, prog.queue_position)
            if shown != last:
                last = shown
                now = f"[{time.perf_counter() - started:.1f} s]"
                if prog.status in order:  # a stage shorter than one poll still gets its line
                    at = order.index(prog.status)
                    for skipped in order[reached:at]:
                        print(f"  {skipped.value}  {now}")
                    reached = max(reached, at + 1)
                where = f" (position {prog.queue_position})" if prog.queue_position else ""
                print(f"  {prog.status.value}{where}  {now}")
            if prog.finished:
                break
            if proc is not None and proc.poll() is not None:
                print("motif: the local worker exited; see its log", file=sys.stderr)
                return 1
            if time.monotonic() > deadline:
                print(f"motif: gave up waiting after {args.timeout:.0f} s", file=sys.stderr)
                return 1
            time.sleep(0.1)
        if prog.status is not RequestStatus.DONE:
            print(f"motif: request #{rid} {prog.status.value}: {prog.error_user}", file=sys.stderr)
            return 1
        out = Path(args.out or settings.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for art in prog.artifacts:
            target = out / art.filename
            target.write_bytes(service.artifact_bytes(art))
            print(f"  wrote {target} ({art.size / 1024:.0f} KiB)")
        t = prog.timings
        print(
            f"done in {time.perf_counter() - started:.2f} s "
            f"(generate {t.get('generate_s', 0):.2f} s, render {t.get('render_s', 0):.2f} s, "
            f"{t.get('notes', '?')} notes, model {prog.model_version}, device {prog.device})"
        )
        if prog.notes.get("shortened"):
            print("  note: the audio was shortened to fit the upload cap")
        return 0
    finally:
        if proc is not None and not args.keep_worker:
            stop_worker_process(proc, settings=settings)


# --- worker, database, models ---------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.celery_app import get_app
    from engine.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if "cpu" in args.queues.split(","):
        from engine.render import check_soundfont

        # A missing or corrupt soundfont stops the start, naming the setting. No synthesizer is
        # created here: the parent forks the pool, and each child loads its own.
        check_soundfont(settings)
    concurrency = args.concurrency or 1
    argv = [
        "worker",
        "-Q",
        args.queues,
        "-c",
        str(concurrency),
        "--loglevel",
        args.loglevel,
        "-n",
        args.name or f"motif-{args.queues.replace(',', '-')}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    get_app().worker_main(argv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from engine import db

    url = get_settings().sqlalchemy_url
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        db.downgrade(url, args.revision or "-1")
    print(f"{db.safe_url(url)}: revision {db.current_revision(url)} (head {db.head_revision(url)})")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from engine import admin
    from engine.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if args.action == "list":
        from engine.model_registry import ensure_default_model

        ensure_default_model(settings)
        for m in admin.list_models(settings):
            mark = "*" if m.active else " "
            nll = m.metrics.get("val_nll")
            extra = f" val_nll={nll:.3f}" if isinstance(nll, int | float) else ""
            why = f" ({m.reject_reason})" if m.reject_reason else ""
            print(f"{mark} {m.version:24} {m.status:10} {m.created_at}{extra}{why}")
    elif args.action == "activate":
        print(f"active: {admin.activate_model(args.version, settings)}")
    elif args.action == "rollback":
        print(f"active: {admin.rollback(settings)}")
    return 0


def cmd_reap(_: argparse.Namespace) -> int:
    from engine.reaper import reap

    report = reap(get_settings())
    print(
        f"requeued {report.requeued}, re-rendered {report.rerendered}, failed {report.failed}, "
        f"training runs failed {report.runs_failed}"
    )
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    from engine.db import ensure_schema
    from engine.jobs import JobService

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    st = JobService(settings).queue_status()
    # (none registered yet: the first worker registers the shipped default when it starts)
    model = st.active_model or "the shipped default (not registered yet)"
    print(f"queued {st.queued}, running {st.running}, active model {model}")
    for w in st.workers:
        print(f"  worker {w}")
    return 0


def cmd_delegate(module: str, argv: list[str]) -> int:
    import importlib

    if module == "engine.corpus" and argv[:1] == ["build"]:
        argv = argv[1:]  # `motif corpus build …`
    main = importlib.import_module(module).main
    return int(main(argv) or 0)


def cmd_bot(_: argparse.Namespace) -> int:
    from bot.main import run

    return int(run(get_settings()) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motif", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compose", help="continue a MIDI seed (or none) through the real queue")
    c.add_argument("seed", nargs="?", help="a .mid file; omit for no seed")
    c.add_argument("--bars", type=int, default=None)
    c.add_argument("--style", default=None)
    c.add_argument("--temperature", type=float, default=None)
    c.add_argument("--top-p", type=float, default=None)
    c.add_argument("--instrument", default=None, help="GM instrument name, e.g. 'flute'")
    c.add_argument("--tempo", type=float, default=None)
    c.add_argument("--rng-seed", type=int, default=None)
    c.add_argument(
        "--from-bar",
        type=int,
        default=None,
        help="continue from this bar of the seed file: the bars before it are the seed "
        "(default: the end)",
    )
    c.add_argument("--out", default=None, help="output folder (default MOTIF_OUTPUT_DIR)")
    c.add_argument("--timeout", type=float, default=600.0)
    c.add_argument("--no-worker", action="store_true", help="never start a local worker")
    c.add_argument("--keep-worker", action="store_true", help="leave the started worker running")
    c.set_defaults(func=cmd_compose)

    w = sub.add_parser("worker", help="run a Celery worker")
    w.add_argument("-Q", "--queues", default="gpu,cpu,train")
    w.add_argument("-c", "--concurrency", type=int, default=1)
    w.add_argument("-n", "--name", default=None)
    w.add_argument("--loglevel", default="INFO")
    w.set_defaults(func=cmd_worker)

    d = sub.add_parser("db", help="database migrations")
    d.add_argument("action", choices=["upgrade", "downgrade", "current"])
    d.add_argument("revision", nargs="?")
    d.set_defaults(func=cmd_db)

    m = sub.add_parser("model", help="list, activate or roll back model versions")
    m.add_argument("action", choices=["list", "activate", "rollback"])
    m.add_argument("version", nargs="?")
    m.set_defaults(func=cmd_model)

    sub.add_parser("reap", help="re-queue jobs whose worker vanished").set_defaults(func=cmd_reap)
    sub.add_parser("status", help="queue length, workers, model").set_defaults(func=cmd_status)
    sub.add_parser("bot", help="run the Discord bot (needs DISCORD_TOKEN)").set_defaults(
        func=cmd_bot
    )
    for name, (module, text) in DELEGATED.items():
        # the arguments after the name are the command's own: `parse_args` puts them in `rest`
        x = sub.add_parser(name, help=text, add_help=False)
        x.set_defaults(rest=[], func=lambda a, mod=module: cmd_delegate(mod, a.rest))
    return p


# Commands whose own parser reads everything after the command's name.
DELEGATED = {
    "corpus": ("engine.corpus", "`motif corpus build`: cache the music21 training corpus"),
    "train": ("engine.train", "train a model"),
    "eval": ("engine.evaluate", "measure a model against the baseline"),
    "retrain": ("engine.retrain", "queue a retraining run on shared tunes"),
    "health": ("engine.health", "check this container's health: bot, worker or db"),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Motif's own options and command; everything after a delegated command's name goes to
    that command's parser untouched (`rest`). argparse's REMAINDER would drop a first argument
    that looks like an option: `motif eval --model m.pt` was refused."""
    for i, token in enumerate(argv):
        if not token.startswith("-"):
            if token in DELEGATED:
                args = build_parser().parse_args(argv[: i + 1])
                args.rest = argv[i + 1 :]
                return args
            break
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(logging, get_settings().log_level, 20),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # alembic tells every command which dialect it found, and kombu that a filesystem://
        # broker has no host name: noise for users (errors still surface as exceptions)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        logging.getLogger("kombu.connection").setLevel(logging.ERROR)
    try:
        return args.func(args)
    except MotifError as exc:
        print(f"motif: {exc.user_message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
