"""Does `--cpu-bf16` train the same model? fp32 and bf16-autocast training from the same
initial weights on the same batches, beside a second fp32 run from another seed (the noise).

`python -m bench.train_curve [--steps 300] [--json out.json]`: the loss, averaged over windows
of steps, for the three runs, and how far bf16 strays from fp32 compared with that noise.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import Any

import numpy as np
import torch

from bench import workload
from engine.model.events import EventCodec
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.model.train.config import TrainConfig
from engine.model.train.data import encode_pieces, sample_batch
from engine.model.train.step import make_optimizer, train_step

log = logging.getLogger(__name__)


def _run(mcfg: ModelConfig, cfg: TrainConfig, batches: list[dict[str, torch.Tensor]],
         init_seed: int, amp_dtype: torch.dtype | None) -> tuple[list[float], float]:  # fmt: skip
    torch.manual_seed(init_seed)
    model = MotifSeq2Seq(mcfg).train()
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    losses, t0 = [], time.perf_counter()
    for batch in batches:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr  # constant: the two precisions see the same schedule
        losses.append(train_step(model, batch, optimizer, amp_dtype=amp_dtype))
    return torch.stack(losses).tolist(), time.perf_counter() - t0


def run(steps: int = 300, window: int = 25, batch_size: int | None = None,
        sizes: dict[str, Any] | None = None, corpus_path: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Loss curves (window means) of fp32 seed 0, bf16 seed 0 and fp32 seed 1 over `steps`
    steps of a fresh default-size model (TrainConfig's sizes unless `sizes`)."""
    codec = EventCodec()
    mcfg = ModelConfig.for_codec(codec, **{**workload.default_sizes(), **(sizes or {})})
    cfg = TrainConfig() if batch_size is None else TrainConfig(batch_size=batch_size)
    pieces, music_label = workload.music(256, corpus_path)
    data = encode_pieces(codec, pieces)
    rng = np.random.default_rng(0)
    batches = [sample_batch(rng, data, codec, cfg) for _ in range(steps)]
    runs = {
        "fp32": _run(mcfg, cfg, batches, 0, None),
        "bf16": _run(mcfg, cfg, batches, 0, torch.bfloat16),
        "fp32_other_seed": _run(mcfg, cfg, batches, 1, None),
    }
    n = max(1, steps // window)
    curves = {k: [float(np.mean(v[0][i * window : (i + 1) * window])) for i in range(n)]
              for k, v in runs.items()}  # fmt: skip
    a, b, c = (np.array(curves[k]) for k in ("fp32", "bf16", "fp32_other_seed"))
    return {
        "music": music_label,
        "model": f"fresh, d_embed {mcfg.d_embed}, hidden {mcfg.hidden}, {mcfg.layers} layers",
        "steps": steps,
        "window": window,
        "batch": cfg.batch_size,
        "threads": torch.get_num_threads(),
        "curves": curves,
        "wall_s": {k: v[1] for k, v in runs.items()},
        "bf16_vs_fp32_max_abs": float(np.abs(b - a).max()),
        "noise_max_abs": float(np.abs(c - a).max()),
        "bf16_vs_fp32_final": float(b[-1] - a[-1]),
        "noise_final": float(c[-1] - a[-1]),
    }


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"Loss per note (nats), mean over windows of {r['window']} steps, {r['model']}, batch "
        f"{r['batch']}, constant lr, same batches ({r['music']}); {r['threads']} thread(s)",
        "",
        "| steps | fp32 | bf16 autocast | fp32, other init seed |",
        "|---:|---:|---:|---:|",
    ]
    c = r["curves"]
    for i, (a, b, o) in enumerate(zip(c["fp32"], c["bf16"], c["fp32_other_seed"], strict=True)):
        lines.append(f"| {i * r['window'] + 1}-{(i + 1) * r['window']} | {a:.3f} | {b:.3f} | "
                     f"{o:.3f} |")  # fmt: skip
    w = r["wall_s"]
    lines += [
        "",
        f"max |bf16 - fp32| over windows {r['bf16_vs_fp32_max_abs']:.3f} nats; max |other seed - "
        f"fp32| (noise) {r['noise_max_abs']:.3f}; last window: {r['bf16_vs_fp32_final']:+.3f} vs "
        f"{r['noise_final']:+.3f}. Wall: fp32 {w['fp32']:.0f} s, bf16 {w['bf16']:.0f} s "
        f"({w['fp32'] / w['bf16']:.2f}x).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--window", type=int, default=25)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, help="model width (default: TrainConfig's)")
    p.add_argument("--d-embed", type=int, help="embedding width (default: TrainConfig's)")
    p.add_argument("--corpus", help="corpus .npz (default: the shipped corpus)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    sizes = {k: v for k, v in (("hidden", args.hidden), ("d_embed", args.d_embed)) if v}
    r = run(args.steps, args.window, sizes=sizes, corpus_path=args.corpus)
    print(markdown(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2)


if __name__ == "__main__":
    main()
