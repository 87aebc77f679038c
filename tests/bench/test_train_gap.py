"""bench.train_gap: its phased step is engine.model.train.step.train_step, and its run gives every figure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench import train_gap, workload
from engine.model.train.config import TrainConfig
from engine.model.train.data import encode_pieces, sample_batch
from engine.model.train.step import make_optimizer, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_phased_step_takes_train_steps_step():
    lm = workload.fresh_model(d_embed=8, hidden=16, layers=1)
    pieces, _ = workload.music(4, "absent-corpus.npz")
    data = encode_pieces(lm.codec, pieces)
    cfg = TrainConfig(batch_size=4)
    batches = [sample_batch(np.random.default_rng(0), data, lm.codec, cfg) for _ in range(2)]
    losses = {}
    for name in ("train_step", "phased"):
        torch.manual_seed(0)
        model = type(lm.model)(lm.model.config)
        optimizer = make_optimizer(model, cfg, torch.device("cpu"))
        out = []
        for batch in batches:
            if name == "train_step":
                out.append(float(train_step(model, batch, optimizer)))
            else:
                times, loss, notes = train_gap.phased_step(model, lambda b=batch: b, optimizer)
                assert set(times) == set(train_gap.PHASES) and notes > 0
                out.append(float(loss))
        losses[name] = out
    assert losses["phased"] == pytest.approx(losses["train_step"], rel=1e-6)


def test_run_gives_every_figure(tiny_model_path, tmp_path):
    r = train_gap.run(repeats=1, steps=1, batch_size=2, model_path=str(tiny_model_path),
                      corpus_path=str(tmp_path / "absent.npz"))  # fmt: skip
    for name in ("motif", "bare"):
        for p in (*train_gap.PHASES, "step"):
            assert math.isfinite(r[f"{name}_{p}_ms"]) and r[f"{name}_{p}_ms"] >= 0
        assert r[f"{name}_gflop_per_step"] > r[f"{name}_recurrent_gflop_per_step"] > 0
    # the same LSTM layers in both; Motif adds attention and deeper heads
    assert r["motif_recurrent_gflop_per_step"] == r["bare_recurrent_gflop_per_step"]
    assert 0 < r["flop_ratio"] < 1
