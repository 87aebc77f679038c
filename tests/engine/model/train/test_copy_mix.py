"""Training through the copy path (engine.model.train.copy_mix.copy_mixed_loss, `objective`):
the loss is the number `copy_nll` scores, with a gradient into what is trained."""

from __future__ import annotations

import pytest
import torch

from engine.errors import BadParams
from engine.model.copy.copying import COPY_FIELDS, N_LEVELS, NO_COPY, CopyParams, shipped_params
from engine.model.events import PITCH, SHIFT, EventCodec
from engine.model.network import IGNORE, ModelConfig, MotifSeq2Seq
from engine.model.train.copy_mix import UNSCORED, copy_mixed_loss, copy_nll, log_probs
from engine.model.train.step import evaluate_windows, freeze, make_optimizer, objective
from tests.engine.model.train.windows import phrase_batch

CODEC = EventCodec()
HALF = CopyParams(weight=2.0, exact=4.0, mix=((0.5,) * N_LEVELS,) * len(COPY_FIELDS))


def _batch() -> dict[str, torch.Tensor]:
    return phrase_batch(4, 16)


def _pointer_model() -> MotifSeq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25, pointer=True)
    return MotifSeq2Seq(cfg).eval()


@pytest.mark.parametrize("params", [NO_COPY, HALF])
def test_the_loss_is_the_copy_paths_nll_and_trains_the_pointer(params):
    model, batch = _pointer_model(), _batch()
    freeze(model, "pointer.")  # as a run does, before any step
    with torch.no_grad():
        scored = copy_nll(model, [batch], torch.device("cpu"), params)["nll_per_note"]
    loss = copy_mixed_loss(model, batch, params)
    assert loss.item() == pytest.approx(scored, rel=1e-5)  # float32 of a float64 sum
    if params.off:  # no copy path: the network's own NLL
        own = evaluate_windows(model, [batch], torch.device("cpu"))["nll_per_note"]
        assert loss.item() == pytest.approx(own, rel=1e-5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("pointer.") for n in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads.values())


def test_a_step_through_the_copy_path_lowers_its_nll():
    """`objective(True)`: steps and the validation score both through the shipped copy path."""
    model, batch = _pointer_model(), _batch()
    freeze(model, "pointer.,heads.")
    optimizer = make_optimizer(model, _Opt(), torch.device("cpu"))
    step, evaluate = objective(True)
    before = copy_nll(model, [batch], torch.device("cpu"), shipped_params())["nll_per_note"]
    model.train()
    for _ in range(5):
        step(model, batch, optimizer)
    model.eval()
    after = evaluate(model, [batch], torch.device("cpu"))["nll_per_note"]
    assert after < before
    assert objective(False)[1] is evaluate_windows
    assert evaluate(model, [batch], torch.device("cpu"))["notes"] > 0


class _Opt:
    weight_decay = 0.0
    lr = 1e-2


@pytest.mark.parametrize("share", [0.25, 0.75])
def test_own_share_mixes_the_networks_own_nll_into_the_loss(share):
    """`--own-share`: that share of the loss is the network's own NLL of the same notes, the
    rest the NLL with the copy path mixed in; its gradient reaches the network either way."""
    model, batch = _pointer_model(), _batch()
    with torch.no_grad():
        mixed = copy_mixed_loss(model, batch, HALF).item()
        own = evaluate_windows(model, [batch], torch.device("cpu"))["nll_per_note"]
        both = copy_mixed_loss(model, batch, HALF, own_share=share).item()
    assert abs(mixed - own) > 0.05  # the two differ, so the mixture is seen
    assert both == pytest.approx((1 - share) * mixed + share * own, rel=1e-5)


def test_own_share_needs_the_copy_path_and_a_share_below_one():
    with pytest.raises(BadParams, match="--through-copy"):
        objective(False, own_share=0.5)
    for bad in (-0.1, 1.0):
        with pytest.raises(BadParams, match="--own-share"):
            objective(True, own_share=bad)


def test_a_confidence_penalty_takes_the_networks_entropy_off_the_loss():
    """`--confidence-penalty B`: the loss is the copy path's NLL less B x the network's own
    entropy per note, summed over the scored fields; the pitches left unscored leave it too."""
    model, batch = _pointer_model(), _batch()
    with torch.no_grad():
        plain = copy_mixed_loss(model, batch, HALF).item()
        logp = log_probs(model, batch)
        target = batch["target"]
        entropy = sum(
            float((-(lp.exp() * lp).sum(-1) * (target[..., f] != IGNORE)).sum())
            for f, lp in enumerate(logp)
        )
        notes = int((target[..., SHIFT] != IGNORE).sum())
        assert entropy / notes > 1.0  # an untrained network is unsure: the term is seen
        penalised = copy_mixed_loss(model, batch, HALF, confidence_penalty=0.25).item()
        assert penalised == pytest.approx(plain - 0.25 * entropy / notes, rel=1e-5)
        skipped = {**batch, UNSCORED: torch.zeros_like(target[..., PITCH], dtype=torch.bool)}
        skipped[UNSCORED][:, 1] = True
        pitch_gone = float(-(logp[PITCH].exp() * logp[PITCH]).sum(-1)[:, 1].sum())
        with_skip = copy_mixed_loss(model, skipped, HALF, confidence_penalty=0.25).item()
        without_skip = copy_mixed_loss(model, skipped, HALF).item()
        assert with_skip - without_skip == pytest.approx(
            -0.25 * (entropy - pitch_gone) / notes, rel=1e-4
        )


def test_a_confidence_penalty_needs_the_copy_path():
    with pytest.raises(BadParams, match="--through-copy"):
        objective(False, confidence_penalty=0.1)
    with pytest.raises(BadParams, match="--confidence-penalty"):
        objective(True, confidence_penalty=-0.1)
