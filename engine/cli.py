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
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import MotifError
from engine.settings import PACKAGE_DIR, Settings, get_settings

if TYPE_CHECKING:
    from engine.service.progress import Progress
    from engine.service.requests import JobService
    from engine.worker.local import LocalWorker

log = logging.getLogger("motif")

EXAMPLE_SEED = PACKAGE_DIR / "data" / "examples" / "ode-to-joy.mid"


# --- compose --------------------------------------------------------------------------------


def live_workers(settings: Settings) -> list[str]:
    from sqlalchemy import select

    from engine.store.db import session_scope
    from engine.store.records import Worker, alive_since

    since = alive_since(settings.worker_heartbeat_s)
    with session_scope(settings.sqlalchemy_url) as session:
        return [w.queues for w in session.scalars(select(Worker).where(Worker.last_seen >= since))]


def wait_worker_ready(
    settings: Settings,
    proc: subprocess.Popen,
    timeout: float,
    log_tail: Callable[[], str],
    ready: Callable[[], object] | None = None,
) -> None:
    """Wait until a worker started for `settings` has registered (or `ready()` is true);
    RuntimeError if it exits first, TimeoutError after `timeout` s (both with its log's end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited: {log_tail()}")
        if (ready or (lambda: live_workers(settings)))():
            return
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready: {log_tail()}")


def _wait_deregistered(settings: Settings, proc: subprocess.Popen, timeout: float) -> bool:
    from sqlalchemy import select

    from engine.store.db import session_scope
    from engine.store.records import Worker

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
    from engine.service.requests import JobService, Requester, validate_options
    from engine.store.db import ensure_schema
    from engine.store.records import RequestOrigin, RequestStatus
    from engine.worker.local import LocalWorker

    settings = get_settings()
    if not args.verbose:
        # the one-line message below says it; the log's warning would be a second line
        logging.getLogger("engine.worker.dispatch").setLevel(logging.ERROR)
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
    seed_bytes, seed_name = None, ""
    if args.seed:
        read = _read_seed(Path(args.seed), options.from_bar)
        if read is None:
            return 2
        seed_bytes, seed_name = read
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    started = time.perf_counter()
    local = None if args.no_worker else LocalWorker(settings, keep=args.keep_worker)
    try:
        if local is not None:
            local.join()  # concurrent composes share one worker
        service = JobService(settings)
        rid = service.compose(
            Requester(origin=RequestOrigin.CLI, name="cli"), options, seed_bytes, seed_name
        )
        print(f"request #{rid} queued ({seed_name or 'no seed'}, {options.bars} bars)")
        prog = _wait_for(service, rid, settings, local, started, args.timeout)
        if prog is None:
            print(f"motif: gave up waiting after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        if prog.status is not RequestStatus.DONE:
            why = f": {prog.error_user}" if prog.error_user else ""
            print(f"motif: request #{rid} {prog.status.value}{why}", file=sys.stderr)
            return 1
        return _write_result(service, prog, Path(args.out or settings.output_dir), started)
    finally:
        if local is not None:
            local.leave()


def _read_seed(path: Path, from_bar: int | None) -> tuple[bytes, str] | None:
    """The seed file's bytes and name, checked before anything starts (its notices printed);
    None, with the reason printed, when it is missing or too large."""
    from engine.music.midi import SeedLimits, load_seed, seed_notices
    from engine.music.notation import is_notation_name, load_notation_seed

    if not path.is_file():
        print(f"motif: no such seed file: {path}", file=sys.stderr)
        return None
    limit = SeedLimits().max_bytes
    if path.stat().st_size > limit:  # refused before a byte is read
        print(
            f"motif: the seed file is too large: {path.stat().st_size:,} bytes "
            f"(the limit is {limit:,} bytes)",
            file=sys.stderr,
        )
        return None
    seed_bytes = path.read_bytes()
    # a bad file is refused before anything starts
    if is_notation_name(path.name):
        load_notation_seed(seed_bytes, path.name)
    else:
        seed = load_seed(seed_bytes, name=path.name, from_bar=from_bar)
        for notice in seed_notices(seed).values():
            print(f"  note: {notice}")
    return seed_bytes, path.name


def _wait_for(
    service: JobService,
    rid: int,
    settings: Settings,
    local: LocalWorker | None,
    started: float,
    timeout: float,
) -> Progress | None:
    """Print each stage the request reaches until it finishes (its last progress); None when
    `timeout` seconds pass first. A database outage is waited out; a local worker that is gone
    is replaced."""
    from engine.errors import ServiceUnavailable
    from engine.store.records import RequestStatus
    from engine.worker.local import serving

    last = None
    order = [RequestStatus.QUEUED, RequestStatus.GENERATING, RequestStatus.RENDERING]
    order.append(RequestStatus.DONE)
    reached = 0  # how many stages of `order` have been printed
    deadline = time.monotonic() + timeout
    next_check = time.monotonic() + 2.0
    outage = False
    while True:
        try:
            prog = service.progress(rid)
        except ServiceUnavailable as exc:
            if not outage:
                print(f"  {exc.user_message} (request #{rid} is saved; waiting)")
            outage = True
            prog = None
        if prog is not None:
            outage = False
            shown = (prog.status, prog.queue_position)
            if shown != last:
                last = shown
                now = f"[{time.perf_counter() - started:.1f} s]"
                if prog.status in order:  # a stage shorter than one poll gets its line
                    at = order.index(prog.status)
                    for skipped in order[reached:at]:
                        print(f"  {skipped.value}  {now}")
                    reached = max(reached, at + 1)
                where = f" (position {prog.queue_position})" if prog.queue_position else ""
                print(f"  {prog.status.value}{where}  {now}")
            if prog.finished:
                return prog
            if local is not None and time.monotonic() >= next_check:
                # Never wait on a worker that is gone: start one when none is live.
                next_check = time.monotonic() + 2.0
                if not serving(settings) and local.ensure():
                    print("  the worker was gone; a new one is running")
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def _write_result(service: JobService, prog: Progress, out: Path, started: float) -> int:
    """Write the result's files into `out` and say how it went."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for art in prog.artifacts:
            target = out / art.filename
            target.write_bytes(service.artifact_bytes(art))
            print(f"  wrote {target} ({art.size / 1024:.0f} KiB)")
    except OSError as exc:
        print(f"motif: cannot write the result to {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    t = prog.timings
    print(
        f"done in {time.perf_counter() - started:.2f} s "
        f"(generate {t.get('generate_s', 0):.2f} s, render {t.get('render_s', 0):.2f} s, "
        f"{t.get('notes', '?')} notes, model {prog.model_version}, device {prog.device})"
    )
    for remark in prog.notes.get("seed_remarks", []):
        print(f"  note: {remark}")
    if prog.notes.get("shortened"):
        print("  note: the audio was shortened to fit the upload cap")
    return 0


# --- worker, database, models ---------------------------------------------------------------


def cmd_worker(args: argparse.Namespace) -> int:
    from engine.store.db import ensure_schema
    from engine.worker.app import get_app

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if "cpu" in args.queues.split(","):
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
    get_app().worker_main(argv)
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from engine.store import db

    url = get_settings().sqlalchemy_url
    if args.action == "upgrade":
        db.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        db.downgrade(url, args.revision or "-1")
    print(f"{db.safe_url(url)}: revision {db.current_revision(url)} (head {db.head_revision(url)})")
    return 0


def cmd_model(args: argparse.Namespace) -> int:
    from engine.service import admin
    from engine.store.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if args.action == "list":
        from engine.store.models import ensure_default_model

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
    from engine.worker.reaper import reap

    report = reap(get_settings())
    print(
        f"requeued {report.requeued}, re-rendered {report.rerendered}, failed {report.failed}, "
        f"training runs failed {report.runs_failed}"
    )
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from engine.service.requests import JobService, Requester
    from engine.store.db import ensure_schema
    from engine.store.records import RequestOrigin

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
    from engine.service.requests import JobService
    from engine.store.db import ensure_schema

    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    st = JobService(settings).queue_status()
    # (none registered yet: the first worker registers the shipped default when it starts)
    model = st.active_model or "the shipped default (not registered yet)"
    print(f"queued {st.queued}, running {st.running}, active model {model}")
    from engine.audio.synth import renderer_description

    print(f"audio here: {renderer_description(settings)}")
    for w in st.workers:
        print(f"  worker {w}")
    return 0


def cmd_delegate(module: str, argv: list[str]) -> int:
    import importlib

    if module == "engine.model.corpus" and argv[:1] == ["build"]:
        argv = argv[1:]  # `motif corpus build …`
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as exc:
        if module.startswith("bench.") and exc.name in ("bench", module):
            # measurements live in the repository's bench/, which the images leave out
            raise MotifError("this command measures from a checkout: bench/ is not here") from exc
        raise
    return int(main(argv) or 0)


def cmd_bot(_: argparse.Namespace) -> int:
    from bot.main import run

    return int(run(get_settings()) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motif", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    _add_compose(sub)

    _add_operations(sub)
    sub.add_parser("reap", help="re-queue jobs whose worker vanished").set_defaults(func=cmd_reap)
    x = sub.add_parser("cancel", help="withdraw a queued request made from this command line")
    x.add_argument("request", type=int, help="the request's number (`motif compose` prints it)")
    x.set_defaults(func=cmd_cancel)
    sub.add_parser("status", help="queue length, workers, model").set_defaults(func=cmd_status)
    sub.add_parser("bot", help="run the Discord bot (needs DISCORD_TOKEN)").set_defaults(
        func=cmd_bot
    )
    for name, (module, text) in DELEGATED.items():
        # the arguments after the name are the command's own: `parse_args` puts them in `rest`
        x = sub.add_parser(name, help=text, add_help=False)
        x.set_defaults(rest=[], func=lambda a, mod=module: cmd_delegate(mod, a.rest))
    return p


def _add_compose(sub: argparse._SubParsersAction) -> None:
    """`motif compose`: every option says its range and its default."""
    from engine.music import catalog
    from engine.service.requests import ComposeOptions

    fields, opts = Settings.model_fields, ComposeOptions()
    c = sub.add_parser("compose", help="continue a MIDI seed (or none) through the real queue")
    c.add_argument("seed", nargs="?", help="a .mid, .abc, .musicxml or .mxl file; omit for no seed")
    c.add_argument(
        "--bars", type=int, default=None,
        help=f"bars to add: 1 to MOTIF_MAX_BARS ({fields['max_bars'].default}); "
        f"default MOTIF_DEFAULT_BARS ({fields['default_bars'].default})",
    )  # fmt: skip
    c.add_argument(
        "--style", default=None,
        help=f"style to lean towards: {', '.join(catalog.STYLES)} or none; default none",
    )  # fmt: skip
    c.add_argument(
        "--temperature", type=float, default=None,
        help=f"lower is safer and more repetitive, higher is wilder: {catalog.MIN_TEMPERATURE:g} "
        f"to {catalog.MAX_TEMPERATURE:g}; default {opts.temperature:g}",
    )  # fmt: skip
    c.add_argument(
        "--top-p", type=float, default=None,
        help=f"sample only from the likeliest choices making up this share of probability: "
        f"{catalog.MIN_TOP_P:g} to {catalog.MAX_TOP_P:g}; default {opts.top_p:g}",
    )  # fmt: skip
    c.add_argument(
        "--instrument", default=None,
        help=f"instrument of the audio (and the MIDI): {', '.join(catalog.INSTRUMENTS)}; "
        f"default {catalog.PROGRAM_NAMES[opts.instrument]}",
    )  # fmt: skip
    c.add_argument(
        "--tempo", type=float, default=None,
        help=f"tempo in BPM: {catalog.MIN_TEMPO:g} to {catalog.MAX_TEMPO:g}; default the seed's "
        "(120 without a seed)",
    )  # fmt: skip
    c.add_argument(
        "--rng-seed", type=int, default=None,
        help=f"makes the result repeatable (same seed, same music): 0 to {catalog.MAX_RNG_SEED}; "
        "default a new random one each time",
    )  # fmt: skip
    c.add_argument(
        "--from-bar", type=int, default=None,
        help=f"continue from this bar of the seed file (the bars before it are the seed): 2 to "
        f"{catalog.MAX_FROM_BAR}; default the end",
    )  # fmt: skip
    _add_compose_run_options(c)
    c.set_defaults(func=cmd_compose)


def _add_compose_run_options(c: argparse.ArgumentParser) -> None:
    """Where the files go, how long to wait, and the local worker."""
    c.add_argument(
        "--out", default=None,
        help="folder for the .mid, audio and .png; default MOTIF_OUTPUT_DIR (out)",
    )  # fmt: skip
    c.add_argument(
        "--timeout", type=float, default=600.0,
        help="seconds to wait for the result before giving up: any positive number; default 600",
    )  # fmt: skip
    c.add_argument(
        "--no-worker", action="store_true",
        help="never start a local worker (wait for a running one); default: start one if none runs",
    )  # fmt: skip
    c.add_argument(
        "--keep-worker", action="store_true",
        help="leave the worker this command started running afterwards; default: stop it",
    )  # fmt: skip


def _add_operations(sub: argparse._SubParsersAction) -> None:
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


# Commands whose own parser reads everything after the command's name.
DELEGATED = {
    "corpus": ("engine.model.corpus", "`motif corpus build`: cache the music21 training corpus"),
    "train": ("engine.model.train", "train a model"),
    "eval": ("bench.evaluate", "measure a model against the baseline"),
    "retrain": ("engine.worker.retrain", "queue a retraining run on shared tunes"),
    "health": ("engine.health", "check this container's health: bot, worker or db"),
    "setup-audio": ("engine.audio.setup", "install libfluidsynth3 for real FluidSynth audio"),
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
    # Exit codes (docs/cli.md): 0 done; 1 the request failed or timed out; 2 refused or a
    # service unreachable (one line saying which); 70 an unexpected error; 130 interrupted.
    try:
        level = getattr(logging, get_settings().log_level, 20)
    except Exception as exc:  # noqa: BLE001 - a bad setting in the environment or .env
        print(f"motif: bad settings: {_first_line(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else level,
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
        log.debug("detail: %s", exc.detail)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for users; -v shows the traceback
        log.debug("unexpected error", exc_info=True)
        print(
            f"motif: unexpected error: {type(exc).__name__}: {_first_line(exc)} "
            "(run with -v for details)",
            file=sys.stderr,
        )
        return 70


def _first_line(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):  # pydantic: name the setting
        with contextlib.suppress(Exception):
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"MOTIF_{where.upper()}: {first.get('msg', '')}"
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


if __name__ == "__main__":
    sys.exit(main())
