"""Where Motif's training step spends the time the bare `nn.LSTM` seq2seq does not: each phase of
the step timed on its own (data preparation, forward, loss, backward, clipping, optimizer), in
turns for both models, and the arithmetic each model does per step (torch's FLOP counter).

`python -m bench.train_gap [--repeats 5] [--bf16]` prints the table; `run()` returns the figures.
The phases are engine.model.train.step.train_step's, in its order, with a clock between them (`phased_step`;
tests check it computes the same loss as train_step).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from bench import workload
from bench.train_bench import BareSeq2Seq
from engine.model.events import SHIFT
from engine.model.network import IGNORE, MotifSeq2Seq
from engine.model.train.config import TrainConfig
from engine.model.train.data import encode_pieces, sample_batch
from engine.model.train.step import field_nll, make_optimizer, teacher_forced

log = logging.getLogger(__name__)

PHASES = ("data", "forward", "loss", "backward", "clip", "optimizer")


def phased_step(
    model: torch.nn.Module,
    make_batch: Callable[[], dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    *,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float = 1.0,
) -> tuple[dict[str, float], torch.Tensor, int]:
    """engine.model.train.step.train_step with the batch drawn inside it and a clock between its phases:
    (seconds per phase, the loss, target notes). CPU only: every op has finished when it returns."""
    clock = [time.perf_counter()]
    batch = make_batch()
    clock.append(time.perf_counter())
    target = batch["target"]
    with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = teacher_forced(model, batch)
    clock.append(time.perf_counter())
    notes = target[..., SHIFT] != IGNORE  # (B, T)
    loss = field_nll(logits, target).sum() / notes.sum()
    clock.append(time.perf_counter())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    clock.append(time.perf_counter())
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    clock.append(time.perf_counter())
    optimizer.step()
    clock.append(time.perf_counter())
    times = {p: clock[i + 1] - clock[i] for i, p in enumerate(PHASES)}
    return times, loss.detach(), int(notes.sum())


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """Forward and backward FLOPs of one step on `batch`: torch's counter for everything but the
    `nn.LSTM` layers (their oneDNN kernels are not counted), plus 3 x 2·B·T·4H·(I + H) per LSTM
    layer (forward, and a backward of about twice the forward)."""
    recurrent = [0]

    def count(module: torch.nn.LSTM, args: tuple, _out: Any) -> None:
        B, T = args[0].shape[:2]  # batch_first
        H = module.hidden_size
        inputs = [module.input_size] + [H] * (module.num_layers - 1)
        recurrent[0] += sum(3 * 2 * B * T * 4 * H * (i + H) for i in inputs)

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.LSTM)]
    try:
        with FlopCounterMode(display=False) as counter:
            logits = teacher_forced(model, batch)
            field_nll(logits, batch["target"]).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    return {"total": int(counter.get_total_flops()) + recurrent[0], "recurrent": recurrent[0]}


def run(
    repeats: int = 5,
    steps: int = 4,
    batch_size: int | None = None,
    model_path: str | None = None,
    corpus_path: str | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Median seconds per phase per step, Motif and bare in turns over the same batches (each
    round draws `steps` batches from the same rng seed), and FLOPs per step of each model."""
    choice = workload.motif_model(model_path)
    mcfg = choice.lm.config
    cfg = TrainConfig() if batch_size is None else TrainConfig(batch_size=batch_size)
    pieces, music_label = workload.music(64, corpus_path)
    data = encode_pieces(choice.lm.codec, pieces)

    torch.manual_seed(0)
    motif = MotifSeq2Seq(mcfg)
    motif.load_state_dict(choice.lm.model.state_dict())
    models = {"motif": motif, "bare": BareSeq2Seq(mcfg)}
    optimizers = {k: make_optimizer(m, cfg, torch.device("cpu")) for k, m in models.items()}

    def one_round(name: str) -> Callable[[], tuple[dict[str, float], int]]:
        model, optimizer = models[name], optimizers[name]

        def go() -> tuple[dict[str, float], int]:
            rng = np.random.default_rng(0)  # the same batches every round, for both models
            total = dict.fromkeys(PHASES, 0.0)
            notes = 0
            for _ in range(steps):
                times, _loss, n = phased_step(
                    model, lambda: sample_batch(rng, data, choice.lm.codec, cfg),
                    optimizer, amp_dtype=amp_dtype, grad_clip=cfg.grad_clip,
                )  # fmt: skip
                notes += n
                for p, s in times.items():
                    total[p] += s
            return total, notes

        return go

    subjects = {name: one_round(name) for name in models}
    for m in models.values():
        m.train()
    for fn in subjects.values():
        fn()  # warm
    t = workload.interleaved(subjects, repeats)
    result: dict[str, Any] = {"model": choice.label, "music": music_label, "repeats": repeats,
                              "steps_per_round": steps, "precision": str(amp_dtype or "fp32"),
                              "threads": torch.get_num_threads()}  # fmt: skip
    for name in models:
        rounds = [r for _, r in t[name]]
        notes = rounds[0][1]
        for p in PHASES:
            result[f"{name}_{p}_ms"] = workload.median([r[0][p] / steps * 1e3 for r in rounds])
        step_s = [sum(r[0].values()) for r in rounds]
        result[f"{name}_step_ms"] = workload.median([s / steps * 1e3 for s in step_s])
        result[f"{name}_notes_per_s"] = workload.median([notes / s for s in step_s])
    result["ratio"] = result["motif_notes_per_s"] / result["bare_notes_per_s"]
    # what the step would be without the data preparation (a perfect prefetch)
    result["ratio_without_data"] = (result["bare_step_ms"] - result["bare_data_ms"]) / (
        result["motif_step_ms"] - result["motif_data_ms"]
    )
    batch = sample_batch(np.random.default_rng(0), data, choice.lm.codec, cfg)
    for name, model in models.items():
        flops = step_flops(model, batch)
        result[f"{name}_gflop_per_step"] = flops["total"] / 1e9
        result[f"{name}_recurrent_gflop_per_step"] = flops["recurrent"] / 1e9
    # the ratio if both models ran their arithmetic at the same FLOP/s
    result["flop_ratio"] = result["bare_gflop_per_step"] / result["motif_gflop_per_step"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast, as --cpu-bf16")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    r = run(args.repeats, args.steps, amp_dtype=torch.bfloat16 if args.bf16 else None)
    print(f"{r['model']}; {r['precision']}, {r['threads']} thread(s), median of {r['repeats']} "
          f"rounds of {r['steps_per_round']} steps, in turns")  # fmt: skip
    print(f"{'ms per step':12}{'Motif':>9}{'bare':>9}{'Motif - bare':>14}")
    for p in (*PHASES, "step"):
        a, b = r[f"motif_{p}_ms"], r[f"bare_{p}_ms"]
        print(f"{p:12}{a:9.1f}{b:9.1f}{a - b:14.1f}")
    print(
        f"notes/s: Motif {r['motif_notes_per_s']:,.0f}, bare {r['bare_notes_per_s']:,.0f}, "
        f"ratio {r['ratio']:.2f} (without data preparation {r['ratio_without_data']:.2f})"
    )
    print(f"GFLOP per step (forward + backward): Motif {r['motif_gflop_per_step']:.2f} "
          f"(LSTM layers {r['motif_recurrent_gflop_per_step']:.2f}), bare "
          f"{r['bare_gflop_per_step']:.2f} (LSTM layers {r['bare_recurrent_gflop_per_step']:.2f});"
          f" bare / Motif = {r['flop_ratio']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
