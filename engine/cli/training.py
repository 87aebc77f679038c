"""`motif train` (`python -m engine.model.train`) and `python -m engine.model.train.copy_fit`: the
command lines of engine.model.train, which holds the work (`train`, `copy_fit.fit_file`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from engine.errors import MotifError
from engine.model.copy.copying import PARAMS_PATH
from engine.model.train import copy_fit
from engine.model.train.config import build_parser, config_from_args
from engine.model.train.train import train
from engine.store.models import train_version
from engine.store.records import utcnow


def train_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    cfg = config_from_args(args)
    cfg.version = cfg.version or train_version(utcnow())  # the one naming scheme (store.models)
    try:
        result = train(cfg)
    except MotifError as exc:
        print(f"motif train: {exc.user_message}")
        return 2
    print(
        f"checkpoint {result.checkpoint} ({result.steps} steps, {result.wall_s:.0f} s, "
        f"{result.tokens_per_s:,.0f} tokens/s); validation NLL/note {result.best_val_nll}; "
        f"test {result.test.get('nll_per_note')}"
    )
    return 0


def copy_fit_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engine.model.train.copy_fit", description=copy_fit.__doc__
    )
    ap.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--corpus", default=None, help="corpus .npz (default: the shipped one)")
    ap.add_argument("--out", default=str(PARAMS_PATH))
    ap.add_argument("--max-windows", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-match", type=int, nargs="+", default=list(copy_fit.MAX_MATCHES))
    args = ap.parse_args(argv)
    doc = copy_fit.fit_file(
        Path(args.model) if args.model else None,
        Path(args.corpus) if args.corpus else None,
        Path(args.out),
        max_windows=args.max_windows,
        threads=args.threads,
        max_matches=args.max_match,
        command="python -m engine.model.train.copy_fit " + " ".join(argv or []),
    )
    print(json.dumps(doc, indent=1))
    return 0
