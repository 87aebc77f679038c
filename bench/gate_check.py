"""Would the retrain gate let a checkpoint replace the shipped model?

`python -m bench.gate_check CANDIDATE.pt [--active engine/data/motif-default.pt]
[--candidate-copy-params FILE] [--active-copy-params FILE] [--threads 1]`: the figures the
retraining job's gate compares (engine.worker.gate: NLL on the corpus's test split, collapse,
seed fidelity with the copy path), for the candidate and the active model side by side, and the
gate's verdict at the default NLL tolerance. Each model decodes with the shipped copy-path fit
(engine/data/copy-params.json) unless a file of its own is named: a new model ships with its own
fit (`python -m engine.model.train.copy_fit --model NEW.pt --out FILE`), so compare it with that.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.settings import DEFAULT_MODEL_PATH, Settings


@contextmanager
def copy_params(path: Path | None) -> Iterator[None]:
    """The copy path decodes with the fit in `path` inside the block (None: the shipped one)."""
    from engine.model.copy import copying

    if path is None:
        yield
        return
    if not path.is_file():  # the copy path would silently be off (shipped_params: no file)
        raise FileNotFoundError(f"no copy-path fit at {path}")
    shipped = copying.PARAMS_PATH
    copying.PARAMS_PATH = path
    copying.shipped_params.cache_clear()
    try:
        yield
    finally:
        copying.PARAMS_PATH = shipped
        copying.shipped_params.cache_clear()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate_check", description=__doc__)
    p.add_argument("candidate", type=Path)
    p.add_argument("--active", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--candidate-copy-params", type=Path, default=None)
    p.add_argument("--active-copy-params", type=Path, default=None)
    p.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.worker.gate import compare, gate, model_figures

    torch.set_num_threads(args.threads)
    base_test = load_corpus(args.corpus).pieces("test")
    figures: dict[str, Any] = {}
    for side, path, params in (
        ("candidate", args.candidate, args.candidate_copy_params),
        ("active", args.active, args.active_copy_params),
    ):
        with copy_params(params):
            lm = load_checkpoint(path)
            figures[side] = model_figures(lm, base_test)
    metrics = compare(figures["candidate"], figures["active"])
    reason = gate(metrics, Settings().gate_nll_tolerance)
    print(json.dumps(metrics, indent=1, default=float))
    print(f"verdict: {'may go live' if reason is None else 'refused: ' + reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
