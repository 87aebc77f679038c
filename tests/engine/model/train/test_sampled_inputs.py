"""Two-pass scheduled sampling (engine.model.train.scheduled.sampled_inputs, `motif train
--sampled-inputs`): drawn pitches feed the decoder and the copy path's memory, the targets stay
the real notes, and nothing changes when nothing is drawn."""

from __future__ import annotations

import pytest
import torch

from engine.errors import BadParams
from engine.model.copy.copying import COPY_FIELDS, N_LEVELS, CopyParams
from engine.model.events import PITCH, EventCodec
from engine.model.network import IGNORE, ModelConfig, MotifSeq2Seq
from engine.model.train.copy_mix import copy_mixed_loss, log_probs, observe
from engine.model.train.data import collate
from engine.model.train.scheduled import ramp_share, sampled_inputs
from engine.model.train.step import (
    evaluate_windows,
    make_optimizer,
    objective,
    teacher_forced,
    train_step,
)
from tests.engine.model.train.windows import phrase_batch, phrase_windows

CODEC = EventCodec()
HALF = CopyParams(weight=2.0, exact=4.0, mix=((0.5,) * N_LEVELS,) * len(COPY_FIELDS))


def _batch() -> dict[str, torch.Tensor]:
    return phrase_batch(3, 8)  # the second window runs past the tune's end: EOS, then padding


@pytest.fixture(params=[False, True], ids=["plain", "pointer"])
def model(request) -> MotifSeq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(
        CODEC, d_embed=16, hidden=24, layers=1, n_key=25, pointer=request.param
    )
    return MotifSeq2Seq(cfg).eval()


def test_every_real_pitch_can_be_drawn_and_nothing_else_changes(model):
    batch = _batch()
    torch.manual_seed(1)
    out = sampled_inputs(model, batch, 1.0)
    target, inputs = batch["target"], out["inputs"]
    assert out["target"] is target  # the targets stay the real notes
    real = target[..., PITCH] >= 0
    assert bool((~real).any()) and bool(real.any())
    assert torch.equal(inputs[~real], target[~real])  # EOS and padding as they were
    drawn = inputs[..., PITCH][real]
    assert bool(((drawn >= 0) & (drawn < CODEC.n_pitch)).all())
    assert bool((drawn != target[..., PITCH][real]).any())  # a random net draws other pitches
    others = [c for c in range(target.size(-1)) if c != PITCH]
    assert torch.equal(inputs[..., others], target[..., others])
    assert sampled_inputs(model, batch, 0.0) is batch


def test_a_share_draws_about_that_share():
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    net = MotifSeq2Seq(cfg).eval()
    batch = _batch()
    real = batch["target"][..., PITCH] >= 0
    swapped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        out = sampled_inputs(net, batch, 0.25)
        # a draw may equal the true pitch; count the positions fed something else or drawn at all
        swapped += int((out["inputs"][..., PITCH] != batch["target"][..., PITCH])[real].sum())
    share = swapped / (20 * int(real.sum()))
    assert 0.10 < share <= 0.30  # 0.25 less the draws that hit the true pitch (binomial spread)


def test_fed_pitches_change_only_later_notes_and_the_true_feed_changes_nothing(model):
    batch = _batch()
    with torch.no_grad():
        plain = teacher_forced(model, batch)
        same = teacher_forced(model, {**batch, "inputs": batch["target"].clone()})
        inputs = batch["target"].clone()
        inputs[:, 5, PITCH] = (inputs[:, 5, PITCH] + 7) % CODEC.n_pitch
        moved = teacher_forced(model, {**batch, "inputs": inputs})
    for a, b, c in zip(plain, same, moved, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same ops on the same numbers
        torch.testing.assert_close(c[:, :6], a[:, :6], rtol=1e-5, atol=1e-6)  # causal
        assert float((c[:, 6:] - a[:, 6:]).abs().max()) > 1e-4  # note 6 on sees the fed pitch


def test_the_copy_paths_memory_holds_the_fed_notes():
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    net = MotifSeq2Seq(cfg).eval()
    batch = _batch()
    grid = ((HALF.weight, HALF.exact, HALF.aligned),)

    def seen(b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return observe(net, b, log_probs(net, b), grid, HALF.max_match)

    inputs = batch["target"].clone()
    real = inputs[..., PITCH] >= 0
    inputs[..., PITCH] = torch.where(real, (inputs[..., PITCH] + 1) % CODEC.n_pitch, IGNORE)
    plain, same = seen(batch), seen({**batch, "inputs": batch["target"].clone()})
    moved = seen({**batch, "inputs": inputs})
    votes = f"c{PITCH}"  # the copy votes' probability of each true pitch: the memory's alone
    assert torch.equal(plain[votes], same[votes])
    assert not torch.allclose(plain[votes], moved[votes])
    with torch.no_grad():
        assert copy_mixed_loss(net, batch, HALF).item() == pytest.approx(
            copy_mixed_loss(net, {**batch, "inputs": batch["target"].clone()}, HALF).item(),
            rel=1e-6,
        )


def test_steps_with_drawn_pitches_train_and_validation_stays_teacher_forced():
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    net = MotifSeq2Seq(cfg)
    batch = _batch()
    step, evaluate = objective(False, 0.5)
    assert evaluate is evaluate_windows
    optimizer = make_optimizer(net, _Opt(), torch.device("cpu"))
    before = evaluate(net, [batch], torch.device("cpu"))["nll_per_note"]
    for _ in range(10):
        step(net, batch, optimizer)
    after = evaluate(net, [batch], torch.device("cpu"))["nll_per_note"]
    assert after < before - 0.1
    for bad in (-0.1, 1.5):
        with pytest.raises(BadParams, match="sampled-inputs"):
            objective(True, bad)


class _Opt:
    weight_decay = 0.0
    lr = 1e-2


def test_a_ramp_draws_nothing_at_the_start_and_feeds_the_draws_at_the_end():
    """`--sampled-ramp`: at progress 0 a step is the teacher-forced step, bit for bit; at 1 the
    drawn pitches are fed (not only drawn: a step that draws alike and feeds nothing differs)."""
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    batch = _batch()
    step, _ = objective(False, 0.6, sampled_ramp=True)

    def after(how: str, progress: float = 0.0) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = MotifSeq2Seq(cfg)
        optimizer = make_optimizer(net, _Opt(), torch.device("cpu"))
        torch.manual_seed(1)
        if how == "plain":
            train_step(net, batch, optimizer)
        elif how == "drawn, not fed":
            fed = sampled_inputs(net, batch, 0.6)
            train_step(net, {k: v for k, v in fed.items() if k != "inputs"}, optimizer)
        else:
            step(net, batch, optimizer, progress=progress)
        return {k: v.detach().clone() for k, v in net.state_dict().items()}

    plain, start = after("plain"), after("ramp", 0.0)
    for k in plain:
        torch.testing.assert_close(start[k], plain[k], rtol=0, atol=0)
    end, unfed = after("ramp", 1.0), after("drawn, not fed")
    assert any(not torch.equal(end[k], unfed[k]) for k in plain)
    assert [ramp_share(0.6, True, p) for p in (-1.0, 0.0, 0.5, 1.0, 2.0)] == pytest.approx(
        [0.0, 0.0, 0.3, 0.6, 0.6]
    )
    assert ramp_share(0.6, False, 0.0) == 0.6
    with pytest.raises(BadParams, match="sampled-ramp"):
        objective(False, 0.0, sampled_ramp=True)


def test_the_lag_inputs_are_rebuilt_from_the_fed_notes():
    """A model with lag inputs: what is fed also sets the lags (whether the previous note
    repeats the lagged one), exactly as `collate` builds them from a window's notes."""
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25, lag_inputs=True)
    net = MotifSeq2Seq(cfg)
    windows = phrase_windows(6, 16, cuts=(16, 24))
    batch = collate(windows, 16, CODEC)
    torch.manual_seed(2)
    out = sampled_inputs(net, batch, 1.0, CODEC)
    fed = [(s, out["inputs"][i, : len(t)].numpy(), 0) for i, (s, t, _) in enumerate(windows)]
    assert torch.equal(out["lags"], collate(fed, 16, CODEC)["lags"])
    assert not torch.equal(out["lags"], batch["lags"])  # the drawn pitches moved some
    with pytest.raises(BadParams, match="codec"):
        sampled_inputs(net, batch, 1.0)


def test_through_the_copy_path_the_draws_follow_its_votes():
    """With a copy path, pitches are drawn from the network with its votes mixed in, as
    generation draws: on a seed that plays a scale over and over, the first continuation note
    is drawn right about half the time at lambda 0.5; from the random network alone, seldom."""
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    net = MotifSeq2Seq(cfg)
    batch = collate(phrase_windows(4, 16, cuts=(16, 24)), 16, CODEC)  # seeds of 2 phrases
    truth = batch["target"][:, 0, PITCH]
    hits = {"copy": 0, "network": 0}
    for seed in range(40):
        for how, params in (("copy", HALF), ("network", None)):
            torch.manual_seed(seed)
            drawn = sampled_inputs(net, batch, 1.0, params=params)["inputs"][:, 0, PITCH]
            hits[how] += int((drawn == truth).sum())
    assert hits["copy"] >= 24 and hits["network"] <= 10, hits  # of 80 draws: expected ~40, ~1
    assert net.training  # the draw ran without dropout, and the mode is given back


@pytest.mark.parametrize("through_copy", [False, True], ids=["network", "copy path"])
def test_skip_next_leaves_out_only_the_pitch_right_after_a_drawn_one(through_copy):
    """`--sampled-skip-next`: the pitch of the note after each fed pitch that is not the real one
    goes unscored (and nothing else), in the network's own loss and through the copy path."""
    from engine.model.train.copy_mix import nll_by_field
    from engine.model.train.step import field_nll

    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(CODEC, d_embed=16, hidden=24, layers=1, n_key=25)
    net = MotifSeq2Seq(cfg).eval()
    batch = _batch()
    torch.manual_seed(3)
    out = sampled_inputs(net, batch, 0.5, skip_next=True)
    target, unscored = batch["target"], out["unscored_pitch"]
    changed = out["inputs"][..., PITCH] != target[..., PITCH]
    assert bool(changed.any()) and not bool(unscored[:, 0].any())
    assert torch.equal(unscored[:, 1:], changed[:, :-1])  # the next note's, exactly
    assert "unscored_pitch" not in sampled_inputs(net, batch, 0.5)
    with pytest.raises(BadParams, match="sampled-inputs"):
        objective(False, 0.0, skip_next=True)

    scored = (target[..., PITCH] != IGNORE) & unscored
    assert bool(scored.any())  # some real pitch is left out
    fed = {k: v for k, v in out.items() if k != "unscored_pitch"}
    with torch.no_grad():
        if through_copy:
            grid = ((HALF.weight, HALF.exact, HALF.aligned),)

            def pitch_nll(b):
                seen = observe(net, b, log_probs(net, b), grid, HALF.max_match)
                return float(nll_by_field(seen, HALF, 0)[PITCH])

            every, kept = pitch_nll(fed), pitch_nll(out)
            others = [copy_mixed_loss(net, b, HALF) for b in (fed, out)]
        else:
            each = field_nll(teacher_forced(net, fed), target)[..., PITCH]
            every, kept = float(each.sum()), float(each.sum() - each[scored].sum())
    if not through_copy:  # the training step's own loss (no step taken: the rate is 0)
        still = torch.optim.SGD(net.parameters(), lr=0.0)
        others = [train_step(net, b, still) for b in (fed, out)]
    assert kept < every - 1e-3  # the left-out pitches cost something, and are left out
    notes = int((target[..., 0] != IGNORE).sum())  # the loss is per note: only the pitch changed
    assert float(others[0] - others[1]) * notes == pytest.approx(every - kept, rel=1e-4)
