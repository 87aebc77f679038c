"""bench.gate_check: the retrain gate's figures for a checkpoint against the active model, each
with the copy-path fit it ships with."""

from __future__ import annotations

import json

import torch

from engine.model.checkpoint import load_checkpoint
from engine.model.copy import copying
from tests.conftest import TINY_TRAINING


def test_a_pointer_fine_tune_is_gated_against_its_base(
    tiny_corpus_model_path, tiny_corpus_path, tmp_path, capsys
):
    """A pointer added to the tiny active model and trained alone (the rest frozen, as the
    shipped model's was) is compared with its base by the gate's own figures."""
    from bench import gate_check
    from engine.model.train.config import TrainConfig
    from engine.model.train.train import train

    shipped_path = copying.PARAMS_PATH

    out = tmp_path / "pointer.pt"
    train(
        TrainConfig(
            out=out,
            corpus_path=tiny_corpus_path,
            init_from=tiny_corpus_model_path,
            pointer=True,
            lags=False,
            phrase=False,
            train_only="pointer.",
            epochs=1,
            max_steps=10,
            eval_windows=16,
            version="tiny-pointer",
            **TINY_TRAINING,
        )
    )
    base, tuned = load_checkpoint(tiny_corpus_model_path), load_checkpoint(out)
    assert tuned.config.pointer and not base.config.pointer
    tuned_state = tuned.model.state_dict()
    for name, weight in base.model.state_dict().items():  # frozen: exactly as loaded (fp16)
        torch.testing.assert_close(tuned_state[name], weight, rtol=0, atol=0)
    assert any(name.startswith("pointer.") for name in tuned_state)

    # the candidate decodes with no copy path of its own, the active one with the shipped fit
    off = tmp_path / "no-copy.json"
    off.write_text(json.dumps({"params": copying.NO_COPY.to_dict()}))
    code = gate_check.main(
        [str(out), "--active", str(tiny_corpus_model_path), "--corpus", str(tiny_corpus_path),
         "--candidate-copy-params", str(off)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    metrics = json.loads(printed[: printed.rindex("}") + 1])
    for side in ("candidate", "active"):
        assert metrics[f"{side}_base_nll"] > 0
        assert set(metrics[f"{side}_fidelity"]) >= {"gain_content", "pattern_reuse"}
    assert 0.0 <= metrics["collapse_rate"] <= 1.0
    verdict = printed.strip().splitlines()[-1]
    assert verdict.startswith("verdict: ") and (code == 0) == ("may go live" in verdict)
    assert shipped_path == copying.PARAMS_PATH  # the shipped fit is back


def test_copy_params_swaps_the_fit_and_puts_it_back(tmp_path):
    from bench.gate_check import copy_params

    shipped = copying.shipped_params()
    off = tmp_path / "no-copy.json"
    off.write_text(json.dumps({"params": copying.NO_COPY.to_dict()}))
    with copy_params(off):
        assert copying.shipped_params().off
    assert copying.shipped_params() == shipped
    with copy_params(None):
        assert copying.shipped_params() == shipped
