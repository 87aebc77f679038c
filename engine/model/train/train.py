"""Train the seq2seq model: random (seed window -> continuation window) pairs cut from pieces.

`train(TrainConfig)` is what `motif train` (engine.cli.training) and the retraining job call: a
run is set up (model, optimizer, data, resumed state), takes steps, evaluates and saves at each
epoch's end, and scores the best checkpoint on the test split. The parts, each readable top to
bottom: `config` (the config and its flags), `data` (windows and batches), `step` (loss, one
step, evaluation), `run` (the run's steps), all in engine.model.train.
"""

from __future__ import annotations

import logging

from engine.model.train.config import TrainConfig, TrainResult
from engine.model.train.run import Run

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> TrainResult:
    """Train until the budget ends; the best checkpoint (by validation NLL) is at `cfg.out`."""
    run = Run(cfg)
    run.take_steps()
    if run.last_eval != run.step or not run.out.exists():
        run.evaluate_and_save()
    return run.finish()
