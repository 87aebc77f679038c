"""`motif corpus build` (`python -m engine.model.corpus`) and `python -m
engine.model.corpus.style_priors`: the command lines of engine.model.corpus, which holds the work
(`build_corpus`, `compute_style_priors`)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from engine.model.corpus import build, strain_returns, style_priors
from engine.model.corpus.build import build_corpus
from engine.model.corpus.load import load_corpus
from engine.model.corpus.parse import COLLECTIONS
from engine.model.corpus.style_priors import DEFAULT_PRIORS_PATH, compute_style_priors


def corpus_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.model.corpus", description=build.__doc__
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-per-collection", type=int, default=None)
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="COLLECTION=N",
        help="cap one collection (repeatable); overrides --max-per-collection for it",
    )
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    limits: int | dict[str, int] | None = args.max_per_collection
    if args.limit:
        limits = {c: args.max_per_collection for c in args.collections}
        for spec in args.limit:
            name, _, n = spec.partition("=")
            limits[name] = int(n)
    stats = build_corpus(
        args.out, collections=args.collections, max_per_collection=limits, workers=args.workers
    )
    print(json.dumps(stats.to_dict(), indent=2))
    return 0


def style_priors_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.model.corpus.style_priors", description=style_priors.__doc__
    )
    parser.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    parser.add_argument("--out", type=Path, default=DEFAULT_PRIORS_PATH)
    args = parser.parse_args(argv)
    priors = compute_style_priors(load_corpus(args.corpus).pieces("train"))
    args.out.write_text(json.dumps(priors, indent=1) + "\n")
    pieces = {style: sum(c["keys"].values()) for style, c in priors.items()}
    print(f"wrote {args.out}: pieces per style {pieces}")
    return 0


def strain_returns_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.model.corpus.strain_returns", description=strain_returns.__doc__
    )
    parser.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    parser.add_argument("--out", type=Path, default=strain_returns.DEFAULT_STRAINS_PATH)
    args = parser.parse_args(argv)
    fitted = strain_returns.write_strain_returns(load_corpus(args.corpus).pieces("train"), args.out)
    print(f"wrote {args.out}: bars counted per longest lag {fitted['bars']}")
    return 0
