"""The Discord round trip: a real bot logged in to the project's fake Discord (tests/bot), a warm
`motif worker` subprocess, `/compose` for 8 bars with the README seed, from the interaction
arriving to the files being posted.

Each request's time is split by the request row's timestamps and the fake's clock: intake (the
bot reads the attachment, writes the row, sends the job), queueing (→ `generating`), generation
(→ `rendering`), the render task's hand-off through the broker and the row writes, rendering (audio
and picture, the worker's own timing; → `done`), the bot's polling (→ its final progress edit,
the first thing it does on noticing) and upload (→ the follow-up with the files). Three set-ups in turns:
SQLite polled every 1 s (before #19), SQLite polled every 0.2 s, and Postgres with LISTEN/NOTIFY
wake-ups (skipped when 127.0.0.1:5432 does not answer; a database of its own, dropped after).

`python -m bench.discord_bench [--requests 20]` prints a table; `run()` returns the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import statistics
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import workload
from bench.e2e_bench import Worker, _settings
from engine.settings import Settings

log = logging.getLogger(__name__)

PG_ADMIN_URL = os.environ.get(
    "MOTIF_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
STAGES = ("intake", "queueing", "generation", "render hand-off", "rendering", "polling", "upload")
MEDIAN_TARGET_S = 1.5
POLLING_TARGET_S = 0.2


@contextmanager
def _postgres_database():  # type: ignore[no-untyped-def]
    """A fresh database of our own on the shared server, dropped afterwards; None if none."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"motif_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001 - any failure: no Postgres set-up
        admin.dispose()
        yield None, f"PostgreSQL at {PG_ADMIN_URL} not usable: {type(exc).__name__}: {exc}"[:200]
        return
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(False), None
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _mono(when: datetime, wall_minus_mono: float) -> float:
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - wall_minus_mono


async def _one_request(bot, fake, payloads, settings: Settings, seed: bytes, bars: int,
                       user_id: int, wall_minus_mono: float) -> dict[str, float]:  # type: ignore[no-untyped-def]  # fmt: skip
    from sqlalchemy import func, select

    from engine.store.db import session_scope
    from engine.store.records import Request, RequestStatus

    with session_scope(settings.sqlalchemy_url) as s:
        last = s.scalar(select(func.max(Request.id))) or 0
    attachment = payloads.attachment("ode-to-joy.mid", seed)
    payload = payloads.slash("compose", {"seed": attachment, "bars": bars, "rng_seed": user_id},
                             user_id=user_id)  # fmt: skip
    token = payload["token"]
    posted = rf"/webhooks/\d+/{re.escape(token)}"
    t_in = time.monotonic()
    bot._connection.parse_interaction_create(payload)
    deadline, checked = t_in + 120, t_in
    while not (found := fake.find("POST", posted)):
        await asyncio.sleep(0.01)
        if time.monotonic() - checked < 1.0:
            continue
        checked = time.monotonic()
        # a failed request is told in the progress message, with no follow-up: say why
        with session_scope(settings.sqlalchemy_url) as s:
            row = s.scalars(select(Request).where(Request.id > last)).first()
            if row is not None and row.status in (RequestStatus.FAILED, RequestStatus.CANCELLED):
                raise RuntimeError(f"request #{row.id} {row.status.value}: {row.error_detail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no files posted for {token} in 120 s")
    t_post = found[0].at
    with session_scope(settings.sqlalchemy_url) as s:
        row = s.scalars(select(Request).where(Request.id > last).order_by(Request.id)).first()
        assert row is not None and row.status is RequestStatus.DONE, row and row.status
        created, gen, rend, fin = (_mono(t, wall_minus_mono) for t in (
            row.created_at, row.generating_at, row.rendering_at, row.finished_at))  # fmt: skip
        render_work = float((row.timings or {}).get("render_s", fin - rend))
    edits = [c.at for c in fake.find("PATCH", rf"/webhooks/\d+/{re.escape(token)}/messages/\S+")
             if c.at >= fin]  # fmt: skip
    noticed = min(edits, default=t_post)
    return {
        "total": t_post - t_in,
        "intake": created - t_in,
        "queueing": gen - created,
        "generation": rend - gen,
        "render hand-off": fin - rend - render_work,  # the render task's hop through the broker
        "rendering": render_work,
        "polling": noticed - fin,
        "upload": t_post - noticed,
    }


async def _session(setups: dict[str, tuple[Settings, float | None]], requests: int, bars: int,
                   seed: bytes) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    from bot.client import MotifBot
    from engine.service.requests import JobService
    from tests.bot.fake_discord import FakeDiscord, Payloads, patched_base

    fake = FakeDiscord()
    await fake.start()
    out: dict[str, list[dict[str, float]]] = {name: [] for name in setups}
    bots = {}
    try:
        async with patched_base(fake):
            payloads = Payloads(fake)
            for name, (settings, poll) in setups.items():
                options = {} if poll is None else {"poll_interval_s": poll}
                bot = MotifBot(settings, JobService(settings), sync_on_start=False, **options)
                await bot.login("fake-bench-token")
                if bot.deliveries.wakeups is not None:
                    await asyncio.wait_for(bot.deliveries.wakeups.connected.wait(), 30)
                bots[name] = bot
            wall_minus_mono = time.time() - time.monotonic()
            user = 10_000
            for i in range(requests + 1):  # the first round warms each set-up: dropped
                for name, bot in bots.items():
                    user += 1  # one request per user: the per-user rate limit stays out of it
                    r = await _one_request(bot, fake, payloads, setups[name][0], seed, bars,
                                           user, wall_minus_mono)  # fmt: skip
                    if i:
                        out[name].append(r)
    finally:
        for bot in bots.values():
            await bot.close()
        await fake.stop()
    return out


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    totals = sorted(r["total"] for r in runs)
    p95 = totals[min(len(totals) - 1, max(0, round(0.95 * len(totals)) - 1))]
    return {
        "n": len(runs),
        "median_s": statistics.median(totals),
        "p95_s": p95,
        **{f"{k}_s": statistics.median(r[k] for r in runs) for k in STAGES},
    }


def run(requests: int = 20, bars: int = 8, threads: int | None = 1,
        model_path: str | None = None, postgres: bool = True) -> dict[str, Any]:  # fmt: skip
    """Median and p95 of `requests` round trips per set-up (in turns), and each stage's median."""
    seed = workload.EXAMPLE_SEED.read_bytes()
    choice = workload.motif_model(model_path)
    out: dict[str, Any] = {"model": choice.label, "requests": requests, "bars": bars,
                           "threads": threads, "notes": [],
                           "median_target_s": MEDIAN_TARGET_S,
                           "polling_target_s": POLLING_TARGET_S}  # fmt: skip
    with workload.temp_dir("motif-bench-discord-") as tmp, _postgres_database() as (pg, why):
        model_file = choice.file(Path(tmp))
        sqlite = _settings(Path(tmp) / "sqlite", model_file, progress_edit_interval_s=0.5)
        workers = [Worker("discord-sqlite", sqlite, threads)]
        setups: dict[str, tuple[Settings, float | None]] = {
            "sqlite, polled every 1 s (before)": (sqlite, 1.0),
            "sqlite, polled every 0.2 s": (sqlite, None),
        }
        if pg is not None and postgres:
            pg_settings = _settings(Path(tmp) / "pg", model_file, database_url=pg,
                                    progress_edit_interval_s=0.5)  # fmt: skip
            workers.append(Worker("discord-pg", pg_settings, threads))
            setups["postgres, LISTEN/NOTIFY wake-ups"] = (pg_settings, None)
        else:
            out["notes"].append(f"postgres skipped: {why or 'not asked for'}")
        try:
            for w in workers:
                w.start()
            for w in workers:
                w.wait_ready()
            try:
                runs = asyncio.run(_session(setups, requests, bars, seed))
            except Exception as exc:
                tails = "\n".join(f"--- {w.name} worker log:\n{w.tail()[-1500:]}" for w in workers)
                raise RuntimeError(f"{type(exc).__name__}: {str(exc)[:300]}\n{tails}") from exc
        finally:
            for w in workers:
                w.stop()
    out["setups"] = {name: _summary(r) for name, r in runs.items()}
    return out


def markdown(r: dict[str, Any]) -> str:
    head = ["set-up", "median", "p95", *STAGES]
    lines = [
        f"Discord round trip, interaction → files posted, `/compose` {r['bars']} bars, "
        f"{r['requests']} requests per set-up in turns, warm CPU worker ({r['model']}); "
        "stage columns are medians",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|",
    ]
    for name, s in r["setups"].items():
        cells = [name, f"{s['median_s']:.3f} s", f"{s['p95_s']:.3f} s",
                 *(f"{s[k + '_s']:.3f}" for k in STAGES)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"- {note}" for note in r["notes"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20)
    p.add_argument("--bars", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-postgres", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kombu").setLevel(logging.ERROR)
    r = run(args.requests, args.bars, args.threads, postgres=not args.no_postgres)
    print(markdown(r))


if __name__ == "__main__":
    main()
