"""One user floods the notation parser; another user's commands are timed.

A real bot in the fake Discord (tests/bot/fake_discord.py), no worker (nothing is generated):
user A sends 8 slow 60 KB `.abc` seeds at once with `/compose`; half a second later user B asks
`/history` (timed to its answer) and a small pasted-ABC `/compose` (timed to its "queued"
progress message). Two parser set-ups in turns: one parser serving first come, first served
and with no failure budget (as before #24, but on the bot's own seed threads) and the pool as shipped (two parsers, users
take turns, one running and two waiting per user, a bounded wait).

`python -m bench.seed_fairness [--rounds 2]`. Targets: `/history` ≤ 2 s, `/compose` ≤ 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import time
from pathlib import Path
from typing import Any

from bench import workload
from engine.music import notation
from engine.music.parsers import ParserPool, PoolLimits
from engine.settings import Settings

SLOW_TUNE = b"X:1\nT:Slow\nM:4/4\nL:1/8\nK:C\n" + b"CDEF GABc|" * 6000  # ~60 KB, seconds of music21
SMALL_TUNE = "X:1 T:Jig M:6/8 L:1/8 K:Em B|EFG BAG|FGA B2B|EFG BAG|FDF E2:|"
FLOOD = 8
HISTORY_TARGET_S, COMPOSE_TARGET_S = 2.0, 10.0
SETUPS = {
    "one parser, first come first served (before)": PoolLimits(
        parsers=1,
        per_user_running=1,
        per_user_waiting=FLOOD,
        max_wait_s=600,
        failure_budget_s=float("inf"),
        in_turns=False,
    ),
    "pool of 2, users in turns (now)": PoolLimits(),
}


async def _answered(fake, token: str, pattern: str, start: float, timeout: float = 180) -> float:  # type: ignore[no-untyped-def]
    path = rf"/webhooks/\d+/{re.escape(token)}/messages/@original"
    while time.monotonic() - start < timeout:
        for call in fake.find("PATCH", path):
            if re.search(pattern, str(call.json)):
                return call.at - start
        await asyncio.sleep(0.01)
    return float("inf")


async def _round(
    settings: Settings, limits: PoolLimits, user_a: int, user_b: int, flood: int, slow: bytes
) -> dict[str, Any]:
    from bot.client import MotifBot
    from engine.service.requests import JobService
    from tests.bot.fake_discord import FakeDiscord, Payloads, patched_base

    pool, previous = ParserPool(limits), notation.PARSERS
    notation.PARSERS = pool
    fake = FakeDiscord()
    await fake.start()
    bot = None
    try:
        async with patched_base(fake):
            payloads = Payloads(fake)
            bot = MotifBot(settings, JobService(settings, dispatch=lambda rid: None),
                           sync_on_start=False)  # fmt: skip
            await bot.login("fake-bench-token")
            warm = SMALL_TUNE.replace(" ", "\n").encode()
            await asyncio.gather(*(  # every parser process started before the clock runs
                asyncio.to_thread(notation.load_notation_seed, warm, "w.abc", user=f"warm-{i}")
                for i in range(limits.parsers)
            ))  # fmt: skip
            sent = []
            for i in range(flood):
                seed = payloads.attachment(f"slow-{i}.abc", slow)
                sent.append(payloads.slash("compose", {"seed": seed}, user_id=user_a))
            for payload in sent:
                bot._connection.parse_interaction_create(payload)
            await asyncio.sleep(0.5)
            history = payloads.slash("history", {}, user_id=user_b)
            compose = payloads.slash("compose", {"abc": SMALL_TUNE}, user_id=user_b)
            start = time.monotonic()
            bot._connection.parse_interaction_create(history)
            bot._connection.parse_interaction_create(compose)
            history_s, compose_s = await asyncio.gather(
                _answered(fake, history["token"], "embeds", start),
                _answered(fake, compose["token"], "queued", start),
            )
            answers = []
            for payload in sent:  # what A was told (refusals come as ephemeral follow-ups)
                token = re.escape(payload["token"])
                said = [str(c.json.get("content") or "queued")[:60]
                        for c in fake.find("POST", rf"/webhooks/\d+/{token}")]  # fmt: skip
                answers.append(said[-1] if said else "(still waiting)")
            busy = sum("busy" in a or "still reading" in a for a in answers)
            return {"history_s": history_s, "compose_s": compose_s, "flood_refused_busy": busy,
                    "flood_answers": answers}  # fmt: skip
    finally:
        if bot is not None:
            await bot.close()
        await fake.stop()
        pool.close()
        notation.PARSERS = previous


def run(rounds: int = 2, flood: int = FLOOD, slow: bytes = SLOW_TUNE) -> dict[str, Any]:
    """Per set-up: the median over `rounds` of B's `/history` and `/compose` times."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in SETUPS}
    user = 50_000
    with workload.temp_dir("motif-bench-fairness-") as tmp:
        for r in range(rounds):
            for name, limits in SETUPS.items():  # in turns
                settings = Settings(
                    _env_file=None,  # type: ignore[call-arg]
                    data_dir=Path(tmp) / f"{r}-{len(results[name])}-{user}" / "var",
                    output_dir=Path(tmp) / "out",
                    user_rate_per_min=flood + 2,
                    user_max_concurrent=flood + 2,
                )
                from engine.store import db

                db.upgrade(settings.sqlalchemy_url)
                user += 2
                figures = asyncio.run(_round(settings, limits, user, user + 1, flood, slow))
                results[name].append(figures)
    out: dict[str, Any] = {"rounds": rounds, "history_target_s": HISTORY_TARGET_S,
                           "compose_target_s": COMPOSE_TARGET_S, "setups": {}}  # fmt: skip
    for name, runs in results.items():
        out["setups"][name] = {
            "history_s": statistics.median(r["history_s"] for r in runs),
            "compose_s": statistics.median(r["compose_s"] for r in runs),
            "flood_refused_busy": statistics.median(r["flood_refused_busy"] for r in runs),
            "runs": runs,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    out = run(args.rounds)
    print(f"{FLOOD} slow .abc seeds from user A; user B's commands, median of {args.rounds}:")
    print("| set-up | B's /history (s) | B's /compose queued (s) | A's seeds answered busy |")
    print("|---|---|---|---|")
    for name, r in out["setups"].items():
        print(f"| {name} | {r['history_s']:.2f} | {r['compose_s']:.2f} | "
              f"{r['flood_refused_busy']:g} of {FLOOD} |")  # fmt: skip
    print(f"targets: /history <= {HISTORY_TARGET_S:g} s, /compose <= {COMPOSE_TARGET_S:g} s")


if __name__ == "__main__":
    main()
