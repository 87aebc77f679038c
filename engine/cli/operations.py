"""`motif worker`, `db`, `model`, `reap`, `cancel`, `status`, `bot`, and the commands that
parse their own arguments (`DELEGATED`): each reached by an import the layout test can see."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from engine.cli.retrain import cmd_retrain
from engine.health import Unhealthy, check_backend, check_broker
from engine.health import main as health_main
from engine.queue.app import configure_now
from engine.service import admin
from engine.service.requests import JobService, Requester
from engine.settings import get_settings
from engine.store import db
from engine.store.db import ensure_schema
from engine.store.models import ensure_default_model
from engine.store.records import RequestOrigin
from engine.worker.app import app as worker_app
from engine.worker.reaper import reap


def cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    # before Celery's start takes over: a bad data folder stays a one-line error
    configure_now(worker_app)
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if "cpu" in args.queues.split(","):
        # deferred: engine.audio needs the `worker` extra, absent from the bot image
        from engine.audio.synth import check_soundfont

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
    worker_app.worker_main(argv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:

    url = get_settings().sqlalchemy_url
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        db.downgrade(url, args.revision or "-1")
    print(f"{db.safe_url(url)}: revision {db.current_revision(url)} (head {db.head_revision(url)})")
    return 0


def cmd_model(args: argparse.Namespace) -> int:

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if args.action == "list":
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

    report = reap(get_settings())
    print(
        f"requeued {report.requeued}, re-rendered {report.rerendered}, failed {report.failed}, "
        f"training runs failed {report.runs_failed}"
    )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    rid = args.request
    if JobService(settings).cancel(rid, Requester(origin=RequestOrigin.CLI, name="cli")):
        print(f"request #{rid} cancelled")
        return 0
    print(
        f"motif: request #{rid} has already started or ended; it cannot be cancelled now",
        file=sys.stderr,
    )
    return 1


def cmd_status(_: argparse.Namespace) -> int:

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    st = JobService(settings).queue_status()
    # (none registered yet: the first worker registers the shipped default when it starts)
    model = st.active_model or "the shipped default (not registered yet)"
    print(f"queued {st.queued}, running {st.running}, active model {model}")
    # deferred: engine.audio needs the `worker` extra, absent from the bot image
    from engine.audio.synth import renderer_description

    print(f"audio here: {renderer_description(settings)}")
    for w in st.workers:
        print(f"  worker {w}")
    failed = False
    for check in (check_broker, check_backend):
        try:
            print(check(settings, settings.broker_timeout_s))
        except Unhealthy as exc:
            print(f"motif: {exc}", file=sys.stderr)
            failed = True
    return 2 if failed else 0


def run_corpus(argv: list[str]) -> int:
    # deferred: engine.model loads music21 and torch; `motif --help` and the bot image load neither
    from engine.cli.corpus import corpus_main

    return corpus_main(argv[1:] if argv[:1] == ["build"] else argv)  # `motif corpus build …`


def run_train(argv: list[str]) -> int:
    # deferred: engine.model loads music21 and torch; `motif --help` and the bot image load neither
    from engine.cli.training import train_main

    return train_main(argv)


def run_setup_audio(argv: list[str]) -> int:
    # deferred: engine.audio needs the `worker` extra, absent from the bot image
    from engine.cli.setup_audio import setup_audio_main

    return setup_audio_main(argv)


def cmd_bot(_: argparse.Namespace) -> int:
    # deferred: one lazy import per command: discord loads only for `motif bot`
    from bot.main import run

    return int(run(get_settings()) or 0)


def add_operations(sub: argparse._SubParsersAction) -> None:
    """`motif worker`, `db` and `model`: running the service."""
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


# Commands whose own parser reads everything after the command's name: name -> (run, help).
DELEGATED: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "corpus": (run_corpus, "`motif corpus build`: cache the music21 training corpus"),
    "train": (run_train, "train a model"),
    "retrain": (cmd_retrain, "queue a retraining run on shared tunes"),
    "health": (health_main, "check this container's health: bot, worker or db"),
    "setup-audio": (run_setup_audio, "install libfluidsynth3 for real FluidSynth audio"),
}
