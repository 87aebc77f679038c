"""Train the seq2seq model: random (seed window -> continuation window) pairs cut from pieces.

`train(TrainConfig)` is what `motif train` (`main`, below) and the retraining job call: a run is
set up (model, optimizer, data, resumed state), takes steps, evaluates and saves at each epoch's
end, and scores the best checkpoint on the test split. The parts, each readable top to bottom:
`config` (the config and its flags), `data` (windows and batches), `step` (loss, one step,
evaluation), `run` (the run's steps), all in engine.model.train.
"""

from __future__ import annotations

import logging

from engine.errors import MotifError
from engine.model.train.config import TrainConfig, TrainResult, build_parser, config_from_args
from engine.model.train.run import Run

log = logging.getLogger(__name__)


def train(cfg: TrainConfig) -> TrainResult:
    """Train until the budget ends; the best checkpoint (by validation NLL) is at `cfg.out`."""
    run = Run(cfg)
    run.take_steps()
    if run.last_eval != run.step or not run.out.exists():
        run.evaluate_and_save()
    return run.finish()


# --- CLI ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    cfg = config_from_args(args)
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


if __name__ == "__main__":
    raise SystemExit(main())
