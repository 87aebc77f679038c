"""`motif retrain`: queue a retraining run on the tunes the community shared, follow it, or cancel
one. The run itself is engine.worker.retrain's, on the `train` queue."""

from __future__ import annotations

import argparse
import time

from engine.service.admin import (
    RetrainOptions,
    cancel_run,
    cancel_run_text,
    request_retrain,
    run_info,
)
from engine.settings import get_settings
from engine.store.db import ensure_schema


def cmd_retrain(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="motif retrain", description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--from-scratch", action="store_true")
    p.add_argument("--collected-share", type=float, default=0.5)
    p.add_argument("--max-minutes", type=float, default=30.0)
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.add_argument(
        "--cancel",
        type=int,
        metavar="RUN",
        default=None,
        help="cancel training run RUN instead of queueing one (a running one stops at its next "
        "step and keeps no candidate)",
    )
    args = p.parse_args(argv)
    settings = get_settings()
    ensure_schema(settings.sqlalchemy_url, auto_create=True)
    if args.cancel is not None:
        outcome = cancel_run(args.cancel, settings)
        print(cancel_run_text(args.cancel, outcome))
        return 0 if outcome else 1
    run_id = request_retrain(
        RetrainOptions(
            epochs=args.epochs,
            from_scratch=args.from_scratch,
            collected_share=args.collected_share,
            max_minutes=args.max_minutes,
        ),
        settings=settings,
    )
    print(f"training run #{run_id} queued on the `train` queue")
    if not args.wait:
        return 0
    last = None
    while True:
        info = run_info(run_id, settings)
        shown = (info.status, info.progress.get("epoch"), info.progress.get("step"))
        if shown != last:
            last = shown
            pr = info.progress
            print(
                f"  {info.status} epoch {pr.get('epoch', '-')} step {pr.get('step', '-')} "
                f"loss {pr.get('loss', '-')} {pr.get('tokens_per_s', '-')} notes/s"
            )
        if info.status in ("done", "rejected", "failed", "cancelled"):
            print(f"run #{run_id}: {info.status} {info.error or ''} candidate {info.candidate}")
            return 0 if info.status == "done" else 1
        time.sleep(2)
