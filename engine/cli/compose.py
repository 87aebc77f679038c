"""`motif compose`: its options, reading the seed, waiting for the stages, writing the result."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ServiceUnavailable
from engine.music import catalog
from engine.music.midi import load_seed, seed_notices
from engine.music.midi_check import SeedLimits
from engine.music.notation import is_notation_name, load_notation_seed
from engine.music.request import ComposeOptions
from engine.service.requests import JobService, Requester, validate_options
from engine.settings import Settings, get_settings
from engine.store.db import ensure_schema
from engine.store.records import RequestOrigin, RequestStatus
from engine.worker.local import LocalWorker, serving

if TYPE_CHECKING:
    from engine.service.progress import Progress


def cmd_compose(args: argparse.Namespace) -> int:

    settings = get_settings()
    if not args.verbose:
        # the one-line message below says it; the log's warning would be a second line
        logging.getLogger("engine.queue.dispatch").setLevel(logging.ERROR)
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
        ending=args.ending,
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
    shown = prog.notes.get("score_bars")
    if isinstance(shown, list) and len(shown) == 2:
        print(
            f"  note: the score pictures show bars 1–{shown[0]} of {shown[1]}; the PDF and the "
            "MusicXML have them all"
        )
    return 0


def add_compose(sub: argparse._SubParsersAction) -> None:
    """`motif compose`: every option says its range and its default."""

    fields, opts = Settings.model_fields, ComposeOptions()
    c = sub.add_parser("compose", help="continue a MIDI seed (or none) through the real queue")
    c.add_argument("seed", nargs="?", help="a .mid, .abc, .musicxml or .mxl file; omit for no seed")
    c.add_argument(
        "--bars",
        type=int,
        default=None,
        help=f"bars to add: 1 to MOTIF_MAX_BARS ({fields['max_bars'].default}); "
        f"default MOTIF_DEFAULT_BARS ({fields['default_bars'].default})",
    )
    c.add_argument(
        "--style",
        default=None,
        help=f"style to lean towards: {', '.join(catalog.STYLES)} or none; default none",
    )
    c.add_argument(
        "--temperature",
        type=float,
        default=None,
        help=f"lower is safer and more repetitive, higher is wilder: {catalog.MIN_TEMPERATURE:g} "
        f"to {catalog.MAX_TEMPERATURE:g}; default {opts.temperature:g}",
    )
    c.add_argument(
        "--top-p",
        type=float,
        default=None,
        help=f"sample only from the likeliest choices making up this share of probability: "
        f"{catalog.MIN_TOP_P:g} to {catalog.MAX_TOP_P:g}; default {opts.top_p:g}",
    )
    _add_compose_shape_options(c, opts)
    _add_compose_run_options(c)
    c.set_defaults(func=cmd_compose)


def _add_compose_shape_options(c: argparse.ArgumentParser, opts: ComposeOptions) -> None:
    """The options that shape the result: instrument, tempo, rng seed, the seed's bar, ending."""
    c.add_argument(
        "--instrument",
        default=None,
        help=f"instrument of the audio (and the MIDI): {', '.join(catalog.INSTRUMENTS)}; "
        f"default {catalog.PROGRAM_NAMES[opts.instrument]}",
    )
    c.add_argument(
        "--tempo",
        type=float,
        default=None,
        help=f"tempo in BPM: {catalog.MIN_TEMPO:g} to {catalog.MAX_TEMPO:g}; default the seed's "
        "(120 without a seed)",
    )
    c.add_argument(
        "--rng-seed",
        type=int,
        default=None,
        help=f"makes the result repeatable (same seed, same music): 0 to {catalog.MAX_RNG_SEED}; "
        "default a new random one each time",
    )
    c.add_argument(
        "--from-bar",
        type=int,
        default=None,
        help=f"continue from this bar of the seed file (the bars before it are the seed): 2 to "
        f"{catalog.MAX_FROM_BAR}; default the end",
    )
    c.add_argument(
        "--ending",
        choices=catalog.ENDINGS,
        default=None,
        help="close: end on a held note of the key's tonic chord; open: stop where the notes "
        f"reach the last bar line (to extend it later); default {catalog.DEFAULT_ENDING}",
    )


def _add_compose_run_options(c: argparse.ArgumentParser) -> None:
    """Where the files go, how long to wait, and the local worker."""
    c.add_argument(
        "--out",
        default=None,
        help="folder for the .mid, audio and .png; default MOTIF_OUTPUT_DIR (out)",
    )
    c.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="seconds to wait for the result before giving up: any positive number; default 600",
    )
    c.add_argument(
        "--no-worker",
        action="store_true",
        help="never start a local worker (wait for a running one); default: start one if none runs",
    )
    c.add_argument(
        "--keep-worker",
        action="store_true",
        help="leave the worker this command started running afterwards; default: stop it",
    )
