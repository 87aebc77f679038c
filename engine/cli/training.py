"""`motif train` (`python -m engine.model.train`), `python -m engine.model.train.copy_fit` and
`python -m engine.model.train.self_samples`: the command lines of engine.model.train, which holds
the work (`train`, `copy_fit.fit_file`, `self_samples.write_self_samples`)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from engine.errors import MotifError
from engine.model.checkpoint import load_checkpoint
from engine.model.copy.copying import PARAMS_PATH
from engine.model.corpus.load import load_corpus
from engine.model.train import copy_fit, self_samples
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


def self_samples_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m engine.model.train.self_samples", description=self_samples.__doc__
    )
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--k", type=int, default=4, help="draws per seed (default 4)")
    ap.add_argument("--seed-bars", type=int, nargs="+", default=[4])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rng-seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.k < 1 or args.batch < 1 or args.threads < 1 or min(args.seed_bars) < 1:
        ap.error("--k, --batch, --threads and --seed-bars must be at least 1")
    logging.basicConfig(level=logging.INFO)
    try:
        corpus = load_corpus(args.corpus)
        self_samples.check_source(corpus)  # before the model loads
        counts = self_samples.write_self_samples(
            load_checkpoint(args.model),
            corpus,
            args.out,
            k=args.k,
            seed_bars=tuple(args.seed_bars),
            batch=args.batch,
            rng_seed=args.rng_seed,
            threads=args.threads,
        )
    except MotifError as exc:
        print(f"self-samples: {exc.user_message}")
        return 2
    print(json.dumps(counts))
    return 0
