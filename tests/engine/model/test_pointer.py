"""The learnt copy path over the seed (engine.model.pointer) and training only some parameters."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.errors import BadParams
from engine.model.events import DURATION, PITCH, SHIFT, EventCodec
from engine.model.network import ModelConfig, MotifSeq2Seq
from engine.model.pointer import next_fields, seed_fields
from engine.model.train.step import freeze, make_optimizer

CODEC = EventCodec()


def _model(pointer: bool = True) -> MotifSeq2Seq:
    torch.manual_seed(0)
    cfg = ModelConfig.for_codec(
        CODEC, d_embed=16, hidden=24, layers=1, dropout=0.0, n_key=25, pointer=pointer
    )
    return MotifSeq2Seq(cfg).eval()


def _events(rows: list[list[tuple[int, int, int]]], width: int) -> torch.Tensor:
    """(B, width, 5) events from (shift, pitch, duration) triples, velocity 3, position 0."""
    out = torch.zeros(len(rows), width, 5, dtype=torch.long)
    for b, row in enumerate(rows):
        for t, (shift, pitch, duration) in enumerate(row):
            out[b, t, :3] = torch.tensor([shift, pitch, duration])
            out[b, t, 3] = 3
    return out


def test_each_seed_step_points_at_the_note_after_it():
    seed = _events([[(1, 40, 2), (2, 42, 3), (3, 44, 4)], [(4, 50, 5), (5, 52, 6), (0, 0, 0)]], 3)
    fields = seed_fields(seed, torch.tensor([3, 2]))
    assert fields[1].tolist() == [[4, 50, 5], [5, 52, 6], [-1, -1, -1]]
    nxt = next_fields(fields)
    assert nxt[0].tolist() == [[2, 42, 3], [3, 44, 4], [-1, -1, -1]]
    assert nxt[1].tolist() == [[5, 52, 6], [-1, -1, -1], [-1, -1, -1]]  # padding points nowhere
    assert (next_fields(seed_fields(seed, torch.tensor([0, 0]))) == -1).all()


def test_without_a_seed_the_pointer_is_shut():
    """No seed, or a one-note seed, leaves nothing to point at: the network alone predicts, so
    what the pointer adds is only ever what the seed tells."""
    with_ptr, without = _model(True), _model(False)
    without.load_state_dict(with_ptr.state_dict(), strict=False)
    target = _events([[(1, 40, 2), (2, 41, 3)], [(1, 60, 2), (1, 62, 2)]], 2)
    seed = _events([[(1, 40, 2)], [(0, 0, 0)]], 1)
    args = (seed, torch.tensor([1, 0]), torch.tensor([0, 1]), target)
    with torch.no_grad():
        for gate in with_ptr.pointer.gate:
            gate.bias.fill_(5.0)  # wide open, were there anything to point at
        a, b = with_ptr(*args), without(*args)
    for field in (SHIFT, PITCH, DURATION):
        torch.testing.assert_close(a[field], torch.log_softmax(b[field], -1), atol=1e-5, rtol=0)


def test_an_open_pointer_proposes_the_note_that_followed():
    """Gate open and attention even: the pitch distribution is the seed's next pitches, counted
    (the seed's last note points at nothing)."""
    model = _model()
    with torch.no_grad():
        for gate in model.pointer.gate:
            gate.bias.fill_(40.0)  # sigmoid == 1 in float32
        model.pointer.key_figure.weight.zero_()  # no key: attention even over the seed
        model.pointer.key.weight.zero_()
    seed = _events([[(1, 40, 2), (1, 45, 2), (1, 47, 2), (1, 45, 2), (1, 50, 2)]], 5)
    target = _events([[(1, 45, 2)]], 1)
    with torch.no_grad():
        logp = model(seed, torch.tensor([5]), torch.tensor([0]), target)
    p = logp[PITCH][0, 0].exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-5)
    expected = {45: 0.5, 47: 0.25, 50: 0.25}
    for pitch, share in expected.items():
        assert p[pitch].item() == pytest.approx(share, abs=1e-5)
    others = [i for i in range(p.numel()) if i not in expected]
    assert p[others].max().item() < 1e-20


def test_the_pointer_finds_the_figure_it_is_in():
    """Keys and queries that are the figure embedding itself: the seed step whose figure equals
    the latest notes' is attended most, so the note that followed it is proposed."""
    model = _model()
    pointer = model.pointer
    H = model.config.hidden
    with torch.no_grad():
        pointer.key.weight.zero_()
        pointer.key_figure.weight.copy_(torch.eye(H) * 8.0)  # score: 8 x figure . figure / sqrt(H)
        for gate in pointer.gate:
            gate.bias.fill_(40.0)
    tune = [(1, p, 2) for p in (40, 43, 47, 52, 41, 38, 36)]
    seed = _events([tune + tune], 2 * len(tune))  # the tune twice: its figures recur in full
    # the continuation begins the tune a third time: after 40 43 47 comes 52
    target = _events([tune[:4]], 4)
    with torch.no_grad():
        logp = model(seed, torch.tensor([2 * len(tune)]), torch.tensor([0]), target)
    p = logp[PITCH][0, 3].exp()
    assert p.argmax().item() == 52
    assert p[52].item() > 2 * max(p[q].item() for q in (43, 47, 41, 38, 36))


def test_train_only_freezes_the_rest_and_names_its_prefixes():
    model = _model().train()
    kept = freeze(model, "pointer.")
    assert kept and all(n.startswith("pointer.") for n in kept)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = make_optimizer(model, SimpleNamespace(weight_decay=0.01, lr=1e-2), torch.device("cpu"))
    seed = _events([[(1, 40, 2), (1, 45, 2), (1, 47, 2)]], 3)
    target = _events([[(1, 45, 2), (1, 47, 2)]], 2)
    logits = model(seed, torch.tensor([3]), torch.tensor([0]), target)
    (-sum(lg[..., 0].sum() for lg in logits[:3])).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(kept)
    with pytest.raises(BadParams, match="names no parameter"):
        freeze(model, "pointr.")
    assert len(freeze(model, "")) == len(before)  # empty: everything trains again
    assert all(p.requires_grad for p in model.parameters())


def test_generation_points_as_training_does_for_short_and_padded_seeds():
    """BatchDecoder against the training forward, with seeds shorter than a figure, padded, and
    rows of every length at once (the fast-path test's seeds are 6, 1 and 0 notes)."""
    from tests.engine.model.test_network import _fast_logits
    from tests.tolerance import REARRANGED, assert_close_to_scale

    model = _model()
    with torch.no_grad():
        for param in model.pointer.parameters():
            param.normal_(std=0.3)
    torch.manual_seed(1)
    cols = [CODEC.n_shift - 1, CODEC.n_pitch, CODEC.n_duration, CODEC.n_velocity, CODEC.n_position]
    seed = torch.stack([torch.randint(0, n, (5, 9)) for n in cols], dim=-1)
    target = torch.stack([torch.randint(0, n, (5, 7)) for n in cols], dim=-1)
    seed_len, style = torch.tensor([9, 3, 2, 7, 0]), torch.tensor([0, 1, 2, 3, 4])
    with torch.no_grad():
        full = model(seed, seed_len, style, target)
        fast = _fast_logits(model, seed, seed_len, style, target)
    for a, b in zip(full, fast, strict=True):
        assert_close_to_scale(a, b, REARRANGED)


def test_seeds_encoded_in_groups_keep_their_pointer_memory():
    """encode_in_groups (seeds of very different lengths, encoded apart) puts each row's
    pointer keys and fields back where one encode of the row alone puts them."""
    from engine.model.generate.decode import encode_in_groups

    model = _model()
    torch.manual_seed(2)
    cols = [CODEC.n_shift - 1, CODEC.n_pitch, CODEC.n_duration, CODEC.n_velocity, CODEC.n_position]
    seed = torch.stack([torch.randint(0, n, (3, 40)) for n in cols], dim=-1)
    seed_len, style, key = (
        torch.tensor([40, 2, 9]),
        torch.tensor([0, 1, 2]),
        torch.tensor([1, 0, 5]),
    )
    with torch.no_grad():
        grouped = encode_in_groups(model, seed, seed_len, style, key)
        assert grouped.pointer_keys is not None and grouped.pointer_seed is not None
        for row in range(3):
            n = int(seed_len[row])
            alone = model.encode(seed[row : row + 1, :n], seed_len[row : row + 1],
                                 style[row : row + 1], key[row : row + 1])  # fmt: skip
            assert torch.equal(grouped.pointer_seed[row, :n], alone.pointer_seed[0])
            assert (grouped.pointer_seed[row, n:] == -1).all()
            torch.testing.assert_close(grouped.pointer_keys[row, :n], alone.pointer_keys[0])
