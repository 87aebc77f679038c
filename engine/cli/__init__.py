"""`motif`: compose from the command line, run workers, manage the database, models and bot."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from engine.cli.compose import add_compose
from engine.cli.doctor import add_setup_commands
from engine.cli.operations import (
    DELEGATED,
    add_operations,
    cmd_bot,
    cmd_cancel,
    cmd_reap,
    cmd_status,
)
from engine.errors import MotifError
from engine.settings import bad_setting_line, get_settings

log = logging.getLogger("motif")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="motif", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    add_compose(sub)

    add_operations(sub)
    add_setup_commands(sub)
    sub.add_parser("reap", help="re-queue jobs whose worker vanished").set_defaults(func=cmd_reap)
    x = sub.add_parser("cancel", help="withdraw a queued request made from this command line")
    x.add_argument("request", type=int, help="the request's number (`motif compose` prints it)")
    x.set_defaults(func=cmd_cancel)
    sub.add_parser("status", help="queue length, workers, model").set_defaults(func=cmd_status)
    sub.add_parser("bot", help="run the Discord bot (needs DISCORD_TOKEN)").set_defaults(
        func=cmd_bot
    )
    for name, (run, text) in DELEGATED.items():
        # the arguments after the name are the command's own: `parse_args` puts them in `rest`
        x = sub.add_parser(name, help=text, add_help=False)
        x.set_defaults(rest=[], func=lambda a, run=run: run(a.rest))
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Motif's own options and command; everything after a delegated command's name goes to
    that command's parser untouched (`rest`). argparse's REMAINDER would drop a first argument
    that looks like an option: `motif train --out m.pt` was refused."""
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
        level = getattr(logging, get_settings().log_level)
    except Exception as exc:  # noqa: BLE001 - a bad setting in the environment or .env
        print(f"motif: {bad_setting_line(exc)}", file=sys.stderr)
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
