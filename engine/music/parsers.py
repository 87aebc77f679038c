"""The notation parser processes: a small pool of sandboxed `engine.music.notation_parser`
processes, shared fairly between users.

Each process starts with a scrubbed environment (no token, no database URL) in an empty folder
of its own, and turns its network off. Waiting parses queue per user and users are served in turns (round-robin);
one user holds at most `per_user_running` parsers, so a flood from one user leaves a parser to
everyone else. A wait is bounded: past `max_wait_s` the caller hears "busy, try again". Failed
and timed-out parses are charged to their user's budget (`failure_budget_s` of parser time per
`failure_window_s`); a user over it is refused before any parse.
"""

from __future__ import annotations

import json
import logging
import math
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RateLimited

log = logging.getLogger(__name__)

_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds `engine`
# -I: no PYTHON* variables, no user site, no current folder on the path
_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from engine.music.notation_parser import serve_process; serve_process()"
_KEPT_VARIABLES = ("PATH", "LANG", "LC_ALL", "TZ")


class ParserBusy(RateLimited):
    """Every parser is taken (or this user already has seeds waiting): try again shortly."""


@dataclass(frozen=True)
class PoolLimits:
    parsers: int = 2
    per_user_running: int = 1  # below `parsers`: one user never takes them all
    per_user_waiting: int = 2  # more from the same user are refused at once
    max_wait_s: float = 20.0
    failure_budget_s: float = 30.0  # parser seconds of failed parses per user and window
    failure_window_s: float = 600.0
    answer_margin_s: float = 30.0  # over the parse limit: the process's own start (music21)
    in_turns: bool = True  # False: first come, first served (for comparison in the bench)


def parser_environment(environ: Mapping[str, str], home: str) -> dict[str, str]:
    """What the parser process may see: a path and a locale, nothing else (no DISCORD_TOKEN, no
    database URL, no MOTIF_* settings). Home and temporary folder are its empty folder."""
    env = {k: environ[k] for k in _KEPT_VARIABLES if k in environ}
    env.setdefault("PATH", "/usr/bin:/bin")
    env.update(HOME=home, TMPDIR=home, PYTHONDONTWRITEBYTECODE="1")
    return env


class ParserProcess:
    """One `engine.music.notation_parser` process, started on first use and restarted when it
    dies. One parse at a time (the pool sees to it); it forks a limited child per parse."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.folder: str | None = None

    def _started(self) -> subprocess.Popen[bytes]:
        if self.proc is None or self.proc.poll() is not None:
            self._clean_folder()
            self.folder = tempfile.mkdtemp(prefix="motif-parser-")
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, _ROOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                cwd=self.folder,
                env=parser_environment(os.environ, self.folder),
                start_new_session=True,  # a Ctrl-C of the bot's terminal is the bot's to handle
            )
        return self.proc

    def _clean_folder(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def discard(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None
        self._clean_folder()

    def ask(self, request: dict[str, Any], text: bytes, answer_within_s: float) -> dict[str, Any]:
        """Send one request; its reply, or {"status": "timeout" | "died"}."""
        message = json.dumps({**request, "size": len(text)}).encode() + b"\n" + text
        for attempt in (1, 2):
            proc = self._started()
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(message)
                proc.stdin.flush()
            except OSError:  # it died after its last answer: start a fresh one, once
                self.discard()
                if attempt == 2:
                    return {"status": "died", "detail": "the parser process would not start"}
                continue
            if not select.select([proc.stdout], [], [], answer_within_s)[0]:
                log.warning("a notation parser did not answer; restarting it")
                self.discard()
                return {"status": "timeout"}
            line = proc.stdout.readline()
            if not line:  # it died during this parse (killed, out of memory)
                self.discard()
                return {"status": "died", "detail": "the parser process died"}
            return dict(json.loads(line))
        raise AssertionError("unreachable")  # pragma: no cover


@dataclass
class _Ticket:
    user: str
    arrived: int
    parser: ParserProcess | None = None


@dataclass
class _Budget:
    spent: deque[tuple[float, float]] = field(default_factory=deque)  # (when, seconds)


class ParserPool:
    """The parser processes and the fair queue in front of them (thread-safe)."""

    def __init__(self, limits: PoolLimits = PoolLimits()) -> None:  # noqa: B008
        self.limits = limits
        self._cond = threading.Condition()
        self._all = tuple(ParserProcess() for _ in range(max(1, limits.parsers)))
        self._free = list(self._all)
        self._waiting: dict[str, deque[_Ticket]] = {}  # in order of arrival
        self._served: dict[str, int] = {}  # when each user was last given a parser
        self._serial = 0
        self._running: dict[str, int] = {}
        self._budgets: dict[str, _Budget] = {}
        self.parses = 0  # parses handed to a process, for tests and benches

    # --- the failure budget ----------------------------------------------------------------
    def check_budget(self, user: str) -> None:
        """Refuse a user whose failed parses used their budget (before anything is parsed)."""
        limits = self.limits
        with self._cond:
            budget = self._budgets.get(user)
            if budget is None:
                return
            now = time.monotonic()
            while budget.spent and budget.spent[0][0] < now - limits.failure_window_s:
                budget.spent.popleft()
            used = sum(seconds for _, seconds in budget.spent)
            if used < limits.failure_budget_s:
                return
            wait = budget.spent[0][0] + limits.failure_window_s - now
        raise RateLimited(
            f"Your last seeds could not be read and used {used:.0f} s of Motif's notation "
            f"reader; try again in {math.ceil(max(1.0, wait))} s.",
            retry_after_s=max(1.0, wait),
        )

    def charge_failure(self, user: str, seconds: float) -> None:
        """A failed or timed-out parse costs its user at least one second of the budget."""
        with self._cond:
            budget = self._budgets.setdefault(user, _Budget())
            budget.spent.append((time.monotonic(), max(1.0, seconds)))
            if len(self._budgets) > 10_000:  # forget users whose window has passed
                old = time.monotonic() - self.limits.failure_window_s
                self._budgets = {
                    u: b for u, b in self._budgets.items() if b.spent and b.spent[-1][0] > old
                }

    # --- the fair queue ----------------------------------------------------------------------
    def _assign(self) -> None:
        """Hand free parsers to waiting tickets: the user served longest ago goes first, so
        users take turns however many seeds each sent (the caller holds the lock)."""
        while self._free:
            eligible = [
                user
                for user in self._waiting
                if self._running.get(user, 0) < self.limits.per_user_running
            ]
            if not eligible:
                return
            if self.limits.in_turns:
                user = min(eligible, key=lambda u: self._served.get(u, -1))
            else:
                user = min(eligible, key=lambda u: self._waiting[u][0].arrived)
            tickets = self._waiting[user]
            ticket = tickets.popleft()
            if not tickets:
                del self._waiting[user]
            ticket.parser = self._free.pop()
            self._running[user] = self._running.get(user, 0) + 1
            self._serial += 1
            self._served[user] = self._serial
            if len(self._served) > 10_000:  # only the users still here matter
                self._served = {
                    u: n
                    for u, n in self._served.items()
                    if u in self._waiting or u in self._running
                }
            self._cond.notify_all()

    @contextmanager
    def turn(self, user: str) -> Iterator[ParserProcess]:
        """Wait for `user`'s turn at a parser (round-robin between users, at most
        `per_user_running` at once each) and hold it; ParserBusy when the wait is too long or
        the user already has too many seeds waiting."""
        limits = self.limits
        with self._cond:
            self._serial += 1
            ticket = _Ticket(user, self._serial)
            waiting = self._waiting.get(user, deque())
            if len(waiting) + self._running.get(user, 0) >= (
                limits.per_user_running + limits.per_user_waiting
            ):
                raise ParserBusy(
                    "Motif is still reading your other seeds; send this one when they are done.",
                    retry_after_s=10,
                )
            self._waiting.setdefault(user, deque()).append(ticket)
            self._assign()
            deadline = time.monotonic() + limits.max_wait_s
            while ticket.parser is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._waiting[user].remove(ticket)
                    if not self._waiting[user]:
                        del self._waiting[user]
                    raise ParserBusy(
                        "Motif is busy reading other seeds right now; try again in a minute.",
                        retry_after_s=30,
                    )
                self._cond.wait(left)
            parser = ticket.parser
        try:
            yield parser
        finally:
            with self._cond:
                self._running[user] -= 1
                if not self._running[user]:
                    del self._running[user]
                self._free.append(parser)
                self._assign()

    def parse(
        self, user: str, request: dict[str, Any], text: bytes, timeout_s: float
    ) -> dict[str, Any]:
        """One parse for `user`, when the queue reaches them: the parser's reply (a dict with a
        "status"). Raises ParserBusy when the wait would be too long."""
        with self.turn(user) as parser:
            self.parses += 1
            return parser.ask(request, text, timeout_s + self.limits.answer_margin_s)

    def close(self) -> None:
        for parser in self._all:
            parser.discard()

    def processes(self) -> list[subprocess.Popen[bytes]]:
        """The running parser processes (for tests: their environment and folder)."""
        return [p.proc for p in self._all if p.proc is not None and p.proc.poll() is None]
