"""Would the retrain gate let a checkpoint replace the shipped model?

`python -m bench.gate_check CANDIDATE.pt [--active engine/data/motif-default.pt] [--threads 1]`:
the figures the retraining job's gate compares (engine.worker.gate.compare: NLL on the corpus's
test split, collapse, seed fidelity with the shipped copy path), for the candidate and the active
model side by side, and the gate's verdict at the default NLL tolerance. A new default model is
shipped only when this says it may go live.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from engine.settings import DEFAULT_MODEL_PATH, Settings


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gate_check", description=__doc__)
    p.add_argument("candidate", type=Path)
    p.add_argument("--active", type=Path, default=DEFAULT_MODEL_PATH)
    p.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.worker.gate import compare, gate

    torch.set_num_threads(args.threads)
    base_test = load_corpus(args.corpus).pieces("test")
    metrics = compare(load_checkpoint(args.candidate), load_checkpoint(args.active), base_test)
    tolerance = Settings().gate_nll_tolerance
    reason = gate(metrics, tolerance)
    print(json.dumps(metrics, indent=1, default=float))
    print(f"verdict: {'may go live' if reason is None else 'refused: ' + reason}")
    return 0 if reason is None else 1


if __name__ == "__main__":
    raise SystemExit(main())
