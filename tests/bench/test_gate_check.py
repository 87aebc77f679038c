"""bench.gate_check: the retrain gate's figures for a checkpoint against the active model, each
with the copy-path fit it ships with."""

from __future__ import annotations

import json

import pytest
import torch

from engine.model.checkpoint import load_checkpoint
from engine.model.copy import copying
from engine.model.corpus.load import load_corpus
from engine.model.fidelity import seed_information_gain
from engine.model.train.step import evaluate_nll
from engine.settings import Settings
from engine.worker.gate import gate
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
    pieces = load_corpus(tiny_corpus_path).pieces("test")
    # each side by its own fit: the candidate's content gain and NLL are its network's alone,
    # the active model's are with the shipped copy path mixed in, as each generates
    for side, lm, copy in (("candidate", tuned, False), ("active", base, True)):
        gain = seed_information_gain(lm, pieces, max_windows=256, copy=copy)
        assert metrics[f"{side}_fidelity"]["gain_content"] == pytest.approx(
            gain["gain_content"], rel=1e-6, abs=1e-9
        )
        own = evaluate_nll(lm, pieces, max_windows=256)["nll_per_note"]
        mixed = evaluate_nll(lm, pieces, max_windows=256, with_copy=copy)["nll_per_note"]
        assert metrics[f"{side}_base_nll"] == pytest.approx(mixed, rel=1e-6)
        if copy:  # the mixture, not the network alone: the copy path helps the real music
            assert mixed < own - 1e-3
    assert 0.0 <= metrics["collapse_rate"] <= 1.0
    reason = gate(metrics, Settings(_env_file=None).gate_nll_tolerance)
    verdict = printed.strip().splitlines()[-1]
    assert verdict == ("verdict: may go live" if reason is None else f"verdict: refused: {reason}")
    assert code == (0 if reason is None else 1)
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
    # a path that names no file would leave the copy path silently off: refused
    with pytest.raises(FileNotFoundError, match="no copy-path fit"), copy_params(tmp_path / "x"):
        pass
    assert copying.shipped_params() == shipped


@pytest.mark.usefixtures("one_torch_thread")
def test_gate_noise_draws_the_gates_figures_block_by_block(
    tiny_corpus_model_path, tiny_corpus_path, capsys
):
    from bench import gate_noise
    from engine.worker.gate import draw_requests, fidelity_seeds, gate_seeds, seed_fidelity

    test = load_corpus(tiny_corpus_path).pieces("test")
    seeds = fidelity_seeds(test, 4)
    own = draw_requests(seeds, 2, 8)
    blocks = [gate_noise.in_block(own, b) for b in range(3)]
    assert blocks[0] == own  # block 0 is the gate's own draw
    rngs = [{r.options.rng_seed for r in block} for block in blocks]
    assert all(len(x) == len(own) for x in rngs)
    assert not (rngs[0] & rngs[1]) and not (rngs[1] & rngs[2]) and not (rngs[0] & rngs[2])
    assert all(r.seed == o.seed and r.options.bars == o.options.bars
               for block in blocks for r, o in zip(block, own, strict=True))  # fmt: skip

    r = gate_noise.run(
        tiny_corpus_model_path, n_seeds=4, draws=2, blocks=3, collapse_draws=2,
        corpus=tiny_corpus_path,
    )  # fmt: skip
    assert len(r["blocks"]) == 3 and r["draws"] == 2 and r["seeds"] == len(seeds) >= 1
    lm = load_checkpoint(tiny_corpus_model_path)
    mine = seed_fidelity(lm, seeds, test, draws=2)  # the gate's own figures are block 0's
    for key in gate_noise.FIGURES:
        assert r["blocks"][0][key] == pytest.approx(mine[key], nan_ok=True)
    assert r["collapse_draws"] == 2 * len(gate_seeds(test))
    assert gate_noise.main([str(tiny_corpus_model_path), "--corpus", str(tiny_corpus_path),
                            "--seeds", "2", "--draws", "1", "--blocks", "2",
                            "--collapse-draws", "1", "--threads", "1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["draws"] == 1
    with pytest.raises(SystemExit):
        gate_noise.main([str(tiny_corpus_model_path), "--draws", "0"])
