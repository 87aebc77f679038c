from __future__ import annotations

import pytest
import torch

from engine.model.events import PHRASE, POSITION, SHIFT, EventCodec
from engine.model.generate.batch_decoder import batch_decoder, step_weights
from engine.model.network import FIELDS, Memory, ModelConfig, MotifSeq2Seq, State
from tests.tolerance import REARRANGED, SAME_MATH, assert_close_to_scale

CODEC = EventCodec()


def _model(**kw) -> MotifSeq2Seq:
    torch.manual_seed(0)
    sizes = dict(d_embed=16, hidden=24, layers=2, dropout=0.1, n_key=25) | kw
    return MotifSeq2Seq(ModelConfig.for_codec(CODEC, **sizes))


def _events(B: int, T: int) -> torch.Tensor:
    cols = [CODEC.n_shift - 1, CODEC.n_pitch, CODEC.n_duration, CODEC.n_velocity, CODEC.n_position]
    return torch.stack([torch.randint(0, n, (B, T)) for n in cols], dim=-1)  # (B, T, 5)


def test_shapes_and_empty_seeds():
    model = _model()
    seed, target = _events(3, 5), _events(3, 7)
    logits = model(seed, torch.tensor([5, 2, 0]), torch.tensor([0, 1, 2]), target)
    sizes = (CODEC.n_shift, CODEC.n_pitch, CODEC.n_duration, CODEC.n_velocity)
    assert len(logits) == len(FIELDS)
    assert [tuple(lg.shape) for lg in logits] == [(3, 7, n) for n in sizes]
    # a batch of no seeds at all (S = 0)
    logits = model(
        seed[:, :0], torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), target
    )
    assert logits[0].shape == (3, 7, CODEC.n_shift) and torch.isfinite(logits[1]).all()


# --- the oracle: one plain LSTMCell step per note, the reference of `BatchDecoder.step` ----------
def decoder_cells(model: MotifSeq2Seq) -> list[torch.nn.LSTMCell]:
    """LSTMCells whose parameters ARE the decoder LSTM's (same tensors, nothing to sync)."""
    lstm = model.decoder
    cells = []
    for layer in range(lstm.num_layers):
        in_size = lstm.input_size if layer == 0 else lstm.hidden_size
        cell = torch.nn.LSTMCell(in_size, lstm.hidden_size, device="meta")
        for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(cell, n, getattr(lstm, f"{n}_l{layer}"))
        cells.append(cell)
    return cells


def reference_step(
    model: MotifSeq2Seq,
    prev: torch.Tensor | None,
    style: torch.Tensor,
    state: State,
    memory: Memory,
) -> tuple[torch.Tensor, State]:
    """One decoder step: prev (B, 5) is the previous note (None: the START step); the key
    comes from the memory. Returns the heads' input o (B, H) and the new state. Call in eval
    mode."""
    cond = model.embed.conditioning(style, memory.key)  # (B, D)
    if prev is None:
        x = model.embed.start + cond  # (B, D)
    else:
        x = model.embed(prev.clamp_min(0)[:, None, :], cond)[:, 0]  # (B, D)
    new_state: State = []
    for cell, hc in zip(decoder_cells(model), state, strict=True):
        h, c = cell(x, hc)  # (B, H) each
        new_state.append((h, c))
        x = h
    o = model._head_input(model.attend(x[:, None, :], memory)[:, 0], memory)  # (B, H)
    return o, new_state


def _step_logits(model, seed, seed_len, style, target, key=None) -> list[torch.Tensor]:
    memory = model.encode(seed, seed_len, style, key)
    state, prev, out = memory.state, None, [[] for _ in range(4)]
    for t in range(target.size(1)):
        o, state = reference_step(model, prev, style, state, memory)
        ctx = o
        for f in range(4):
            out[f].append(model.heads.logits(f, ctx))
            if f < 3:
                ctx = model.heads.condition(f, ctx, target[:, t])
        prev = target[:, t]
    return [torch.stack(x, dim=1) for x in out]  # 4 x (B, T, n)


def _three_rows():
    """Seeds of 6, 1 and 0 notes (and their targets), styles and keys, one of them unknown."""
    seed, target = _events(3, 6), _events(3, 9)
    return seed, target, torch.tensor([6, 1, 0]), torch.tensor([1, 0, 3]), torch.tensor([5, 0, 20])


def test_step_path_equals_full_lstm_path():
    model = _model().eval()
    seed, target, seed_len, style, key = _three_rows()
    with torch.no_grad():
        full = model(seed, seed_len, style, target, key)
        stepped = _step_logits(model, seed, seed_len, style, target, key)
        other_key = model(seed, seed_len, style, target, key.flip(0))
    for a, b in zip(full, stepped, strict=True):
        assert_close_to_scale(a, b, SAME_MATH)
    assert not torch.allclose(full[1], other_key[1])  # the key conditions the pitch


def test_cells_share_the_lstm_weights_and_never_drift():
    model = _model()
    for layer, cell in enumerate(decoder_cells(model)):
        assert cell.weight_ih is getattr(model.decoder, f"weight_ih_l{layer}")
        assert cell.bias_hh is getattr(model.decoder, f"bias_hh_l{layer}")
    # no second copy in the state dict
    assert not any("cell" in k for k in model.state_dict())
    # a training step changes the LSTM; the step path follows without any sync
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seed, target = _events(2, 4), _events(2, 5)
    args = (seed, torch.tensor([4, 2]), torch.tensor([0, 1]))
    sum(lg.sum() for lg in model(*args, target)).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        full, stepped = model(*args, target), _step_logits(model, *args, target)
    assert_close_to_scale(full[1], stepped[1], SAME_MATH)


def test_seed_padding_is_masked():
    model = _model().eval()
    seed, target = _events(1, 3), _events(1, 4)
    padded = torch.cat([seed, _events(1, 5)], dim=1)  # garbage after the real steps
    with torch.no_grad():
        alone = model(seed, torch.tensor([3]), torch.tensor([2]), target)
        pad = model(padded, torch.tensor([3]), torch.tensor([2]), target)
    for a, b in zip(alone, pad, strict=True):
        assert_close_to_scale(a, b, SAME_MATH)


def test_without_attention_and_one_layer():
    model = _model(attention=False, layers=1).eval()
    seed, target = _events(2, 3), _events(2, 4)
    args = (seed, torch.tensor([3, 0]), torch.tensor([0, 0]))
    with torch.no_grad():
        full, stepped = model(*args, target), _step_logits(model, *args, target)
    assert_close_to_scale(full[0], stepped[0], SAME_MATH)


def _fast_logits(model, seed, seed_len, style, target, key=None, lags=None) -> list[torch.Tensor]:
    """Teacher-forced logits through generation's fast path, `BatchDecoder`."""
    decoder = batch_decoder(model, model.encode(seed, seed_len, style, key), style)
    position, phrase = decoder.offsets[POSITION], decoder.offsets[PHRASE]
    events, out = None, [[] for _ in range(4)]
    for t in range(target.size(1)):
        note = target[:, t]  # (B, 5 or 6)
        bar = note[:, PHRASE] if note.size(1) > PHRASE else torch.zeros_like(note[:, 0])
        x = decoder.step(events, None if lags is None else lags[:, t])  # (B, 4H)
        for f in range(4):
            out[f].append(decoder.logits(f, x))
            if f == SHIFT:
                onset = torch.stack(
                    [note[:, SHIFT], note[:, POSITION] + position, bar + phrase], dim=1
                )
                x = decoder.choose(SHIFT, x, onset)
            elif f < 3:
                x = decoder.choose(f, x, note[:, f : f + 1])
        events = decoder.events(note)
    return [torch.stack(x, dim=1) for x in out]  # 4 x (B, T, n)


@pytest.mark.parametrize(
    "sizes",
    [
        {},
        {"attention": False, "layers": 1},
        {"n_key": 0},
        {"layers": 3},
        {"n_phrase": 16},
        {"lag_inputs": True},
        {"pointer": True},
        {"pointer": True, "attention": False, "n_key": 0},
    ],
)
def test_generation_fast_path_equals_the_training_forward(sizes):
    model = _model(**sizes).eval()
    seed, target, seed_len, style, key = _three_rows()
    lags = None
    if model.config.lag_inputs:  # trained lag tables (they start at zero) and random inputs
        with torch.no_grad():
            for emb in model.embed.lag:
                emb.weight.normal_(std=0.3)
        sizes_ = [emb.num_embeddings for emb in model.embed.lag]
        lags = torch.stack(
            [torch.randint(0, n, target.shape[:2]) for n in sizes_], dim=-1
        )  # (B, T, columns)
    if model.config.n_phrase:  # trained phrase tables (they start at zero) and a PHRASE column
        with torch.no_grad():
            model.embed.phrase.weight.normal_(std=0.3)
            model.heads.chosen_phrase.weight.normal_(std=0.3)
        seed = torch.cat([seed, torch.randint(0, 16, seed.shape[:2])[..., None]], dim=-1)
        target = torch.cat([target, torch.randint(0, 16, target.shape[:2])[..., None]], dim=-1)
    if model.pointer is not None:  # a trained pointer: queries, keys and gates that matter
        with torch.no_grad():
            for param in model.pointer.parameters():
                param.normal_(std=0.3)
    with torch.no_grad():
        full = model(seed, seed_len, style, target, key, lags)
        fast = _fast_logits(model, seed, seed_len, style, target, key, lags)
    for a, b in zip(full, fast, strict=True):
        assert_close_to_scale(a, b, REARRANGED)


def test_fast_path_tables_follow_the_weights():
    model = _model()
    assert step_weights(model) is step_weights(model)  # cached while nothing changes
    assert not any("step" in k for k in model.state_dict())  # derived, never saved
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seed, target = _events(2, 4), _events(2, 5)
    args = (seed, torch.tensor([4, 2]), torch.tensor([0, 1]))
    model.eval()
    with torch.no_grad():
        before = _fast_logits(model, *args, target)
    model.train()
    sum(lg.sum() for lg in model(*args, target)).backward()
    opt.step()  # in place: the tables must be rebuilt
    model.eval()
    with torch.no_grad():
        full, fast = model(*args, target), _fast_logits(model, *args, target)
    assert not torch.allclose(before[1], fast[1])
    for a, b in zip(full, fast, strict=True):
        assert_close_to_scale(a, b, REARRANGED)


def test_tables_made_in_inference_mode_still_train():
    """Generation decodes under inference_mode (engine.model.generate.continuation); the step
    tables it caches on the model stay normal tensors, so the model can train afterwards and
    the tables follow its new weights."""
    model = _model().eval()
    with torch.inference_mode():
        tables = step_weights(model)
    made = [t for t in vars(tables).values() if isinstance(t, torch.Tensor)]
    assert made and not any(t.is_inference() for t in made)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    seed, target = _events(2, 4), _events(2, 5)
    model.train()
    sum(
        lg.sum() for lg in model(seed, torch.tensor([4, 2]), torch.tensor([0, 1]), target)
    ).backward()
    opt.step()
    with torch.inference_mode():
        assert step_weights(model) is not tables
