"""Generation's decoder: the network of engine.model.network rearranged for one note at a time.

`StepWeights` folds the embeddings through the first layers into lookup tables (derived from the
weights, never trained); `BatchDecoder` runs one batch's LSTM layers, attention and four heads
step by step, matching the training forward up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from engine.model.events import DURATION, PHRASE, PITCH, POSITION, SHIFT
from engine.model.network import Memory, MotifSeq2Seq, State
from engine.model.pointer import FIGURE_NOTES, FLOOR, POINTER_FIELDS, FigureEncoder, next_fields

_SQRT_HALF = math.sqrt(0.5)


def _gates_ifog(w: torch.Tensor) -> torch.Tensor:
    """LSTM gate rows (or entries) from PyTorch's (i, f, g, o) order to (i, f, o, g): the three
    sigmoid gates side by side, so one call computes them."""
    i, f, g, o = w.chunk(4, dim=0)
    return torch.cat([i, f, o, g], dim=0)


@dataclass
class StepWeights:
    """The decoder's and heads' parameters rearranged for generation, derived (never trained).

    Every lookup that precedes a matrix product is folded into a table: an event column's
    embedding through the first LSTM layer's input weights, a chosen field's embedding through
    the later heads' first layers. Matrices are stored transposed, as `addmm` wants them, and the
    LSTM gates in (i, f, o, g) order."""

    hidden: int
    offsets: tuple[int, ...]  # row of value 0 of each event column (PHRASE too), style, key
    event_gates: torch.Tensor  # (rows, 4H) each value's embedding @ layer 0's input weights
    start_gates: torch.Tensor  # (4H,) the START input
    lag_gates: torch.Tensor | None  # (rows, 4H) the lag inputs' embeddings; None: no lag inputs
    lag_offsets: tuple[int, ...]  # row of value 0 of each lag input column
    hh: list[torch.Tensor]  # per layer (H, 4H)
    ih: list[torch.Tensor | None]  # per layer (H, 4H); None for layer 0 (tables instead)
    bias: list[torch.Tensor | None]  # per layer (4H,); None for layer 0 (in the style rows)
    attn_dec: torch.Tensor | None  # (H, H) attn_out on the decoder state; None: no attention
    attn_ctx: torch.Tensor | None  # (H, H) attn_out on the attention context
    attn_bias: torch.Tensor | None  # (H,)
    head_in: torch.Tensor  # (H, 4H) the four heads' first layers side by side, / sqrt(2)
    head_in_bias: torch.Tensor  # (4H,) / sqrt(2)
    head_key: torch.Tensor | None  # (n_key, 4H) the head key embedding through head_in
    chosen: list[torch.Tensor]  # SHIFT (event rows, 3H), PITCH (n_pitch, 2H), DURATION (n_dur, H)
    head_out: list[torch.Tensor]  # per field (H, n_field), / sqrt(2)
    head_out_bias: list[torch.Tensor]  # per field (n_field,)
    # the pointer (engine.model.pointer) per pointed field, on the heads' hidden layer x sqrt(2)
    # as `logits` has it, so scaled by 1/sqrt(2); None: no pointer
    pointer_query: list[torch.Tensor] | None = None  # (H, H)
    pointer_gate: list[torch.Tensor] | None = None  # (H, 1)
    pointer_gate_bias: list[torch.Tensor] | None = None  # (1,)
    pointer_sure: torch.Tensor | None = None  # (3,) the gate's weight on the attention's largest
    pointer_figures: FigureEncoder | None = None  # the model's own module, for `indices`
    pointer_figure_rows: torch.Tensor | None = None  # (rows, H) FigureEncoder.folded's table
    pointer_figure_offsets: torch.Tensor | None = None  # (K, 4) and its offsets
    pointer_figure_bias: torch.Tensor | None = None  # (H,)

    @classmethod
    def of(cls, model: MotifSeq2Seq) -> StepWeights:
        H, lstm, heads = model.config.hidden, model.decoder, model.heads
        w_in = _gates_ifog(lstm.weight_ih_l0)  # (4H, D)
        # The input is the sum of the six column embeddings, style and key (EventEmbedding), so
        # its gates are the sum of eight table rows; layer 0's biases ride on the style's rows.
        # A model without the PHRASE input gets one zero row for it.
        key, phrase = model.embed.key, model.embed.phrase
        tables = [emb.weight @ w_in.T for emb in model.embed.columns]
        tables.append(w_in.new_zeros(1, 4 * H) if phrase is None else phrase.weight @ w_in.T)
        bias = _gates_ifog(lstm.bias_ih_l0 + lstm.bias_hh_l0)
        tables.append(model.embed.style.weight @ w_in.T + bias)
        tables.append(w_in.new_zeros(1, 4 * H) if key is None else key.weight @ w_in.T)
        sizes = [t.size(0) for t in tables]
        offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
        # The heads' first layers side by side, scaled by 1/sqrt(2): for z = x / sqrt(2),
        # GELU(x) = (z + z erf(z)) / sqrt(2), and that 1/sqrt(2) goes into the second layers.
        first = [lin[0] for lin in heads.out]
        head_in = torch.cat([lin.weight for lin in first]) * _SQRT_HALF  # (4H, H)
        head_in_bias = torch.cat([lin.bias for lin in first]) * _SQRT_HALF  # (4H,)
        onset = _onset_table(model, offsets)
        attention = model.config.attention
        lag_gates, lag_offsets = _lag_tables(model, w_in)
        return cls(
            hidden=H,
            offsets=offsets,
            event_gates=torch.cat(tables),
            start_gates=model.embed.start @ w_in.T,
            lag_gates=lag_gates,
            lag_offsets=lag_offsets,
            hh=[
                _gates_ifog(getattr(lstm, f"weight_hh_l{n}")).T.contiguous()
                for n in range(lstm.num_layers)
            ],
            ih=[None]
            + [
                _gates_ifog(getattr(lstm, f"weight_ih_l{n}")).T.contiguous()
                for n in range(1, lstm.num_layers)
            ],
            bias=[None]
            + [
                _gates_ifog(getattr(lstm, f"bias_ih_l{n}") + getattr(lstm, f"bias_hh_l{n}"))
                for n in range(1, lstm.num_layers)
            ],
            attn_dec=model.attn_out.weight[:, :H].T.contiguous() if attention else None,
            attn_ctx=model.attn_out.weight[:, H:].T.contiguous() if attention else None,
            attn_bias=model.attn_out.bias.clone() if attention else None,
            head_in=head_in.T.contiguous(),
            head_in_bias=head_in_bias,
            head_key=None if model.head_key is None else model.head_key.weight @ head_in.T,
            chosen=[
                onset @ head_in[H:].T,  # (event rows, 3H)
                heads.chosen[PITCH].weight @ head_in[2 * H :].T,  # (n_pitch, 2H)
                heads.chosen[DURATION].weight @ head_in[3 * H :].T,  # (n_duration, H)
            ],
            head_out=[(lin[2].weight.T * _SQRT_HALF).contiguous() for lin in heads.out],
            head_out_bias=[lin[2].bias.clone() for lin in heads.out],
            **_pointer_tables(model),
        )


def _pointer_tables(model: MotifSeq2Seq) -> dict[str, Any]:
    """StepWeights' pointer fields of the model (none for a model without a pointer)."""
    pointer = model.pointer
    if pointer is None:
        return {}
    rows, offsets = pointer.figures.folded()
    return {
        "pointer_query": [(q.weight.T * _SQRT_HALF).contiguous() for q in pointer.queries()],
        "pointer_gate": [(g.weight.T * _SQRT_HALF).contiguous() for g in pointer.gates()],
        "pointer_gate_bias": [g.bias.clone() for g in pointer.gates()],
        "pointer_sure": pointer.gate_sure.detach().clone(),
        "pointer_figures": pointer.figures,
        "pointer_figure_rows": rows,
        "pointer_figure_offsets": offsets,
        "pointer_figure_bias": pointer.figures.mix.bias.detach().clone(),
    }


def _onset_table(model: MotifSeq2Seq, offsets: tuple[int, ...]) -> torch.Tensor:
    """(rows, H): choosing the shift adds the shift's, the position's and the phrase bar's
    embeddings to the input of every later head; rows laid out like `event_gates` (`offsets`),
    so one index serves both."""
    heads = model.heads
    onset = heads.chosen_position.weight.new_zeros(offsets[PHRASE + 1], model.config.hidden)
    onset[: offsets[PITCH]] = heads.chosen[SHIFT].weight
    onset[offsets[POSITION] : offsets[PHRASE]] = heads.chosen_position.weight
    if heads.chosen_phrase is not None:
        onset[offsets[PHRASE] :] = heads.chosen_phrase.weight
    return onset


def _lag_tables(model: MotifSeq2Seq, w_in: torch.Tensor) -> tuple[torch.Tensor | None, tuple]:
    """The lag inputs' embeddings through layer 0's input weights w_in (4H, D), one table of
    (rows, 4H), and the row of value 0 of each column; (None, ()) for a model without them."""
    if model.embed.lag is None:
        return None, ()
    tables = [emb.weight @ w_in.T for emb in model.embed.lag]
    sizes = [t.size(0) for t in tables]
    return torch.cat(tables), tuple(sum(sizes[:i]) for i in range(len(sizes)))


class BatchDecoder:
    """One batch's decoder during generation: `step` runs the LSTM layers and the attention for
    the previous note, then `logits` and `choose` alternate through the four heads. What stays
    the same for a row during the whole continuation (style, key, the seed's attention keys) is
    looked up once here, not every note. Matches the training forward up to float rounding.

        x = decoder.step(events)                      # (B, 4H): every head's input so far
        shift = sample(decoder.logits(SHIFT, x))      # (B, 1)
        x = decoder.choose(SHIFT, x, torch.cat([shift, position + offsets[POSITION],
                                                 phrase + offsets[PHRASE]], 1))
        pitch = sample(decoder.logits(PITCH, x)) ...  # then DURATION, then VELOCITY
    """

    def __init__(self, weights: StepWeights, memory: Memory, style: torch.Tensor) -> None:
        w = self.weights = weights
        self.state = memory.state
        # style and key ride along as the last two event columns of every step
        extras = torch.stack([style, memory.key], dim=1)  # (B, 2)
        self.extras = extras + extras.new_tensor(w.offsets[-2:])
        self.start = w.event_gates[self.extras].sum(dim=1) + w.start_gates  # (B, 4H)
        self.head_bias = w.head_in_bias.expand(style.size(0), -1)  # (B, 4H)
        if w.head_key is not None:
            self.head_bias = self.head_bias + w.head_key[memory.key]
        self.values = memory.values  # (B, S, H)
        self._bags(style.size(0), style.device)
        if w.attn_dec is not None:
            assert memory.keys is not None
            scaled = memory.keys / math.sqrt(w.hidden)  # (B, S, H)
            self.keys_t = scaled.transpose(1, 2).contiguous()  # (B, H, S)
            pad = torch.zeros_like(memory.mask, dtype=memory.values.dtype)
            self.pad = pad.masked_fill(~memory.mask, float("-inf"))[:, None, :]  # (B, 1, S)
        self.pointing = w.pointer_query is not None and memory.pointer_keys is not None
        if self.pointing:
            self._pointer_memory(memory)

    def _pointer_memory(self, memory: Memory) -> None:
        """The pointer's per-row tables, as engine.model.pointer.SeedPointer.mix reads them, and
        the latest notes whose figure queries it (the seed's last ones to begin with)."""
        assert memory.pointer_keys is not None and memory.pointer_seed is not None
        keys, fields = memory.pointer_keys, memory.pointer_seed
        nxt = next_fields(fields)
        self.ptr_keys_t = (keys / math.sqrt(self.weights.hidden)).transpose(1, 2).contiguous()
        valid = (nxt >= 0).transpose(1, 2)  # (B, 3, S)
        has = valid.any(dim=-1)  # (B, 3)
        pad = torch.zeros(valid.shape, dtype=keys.dtype, device=keys.device)
        self.ptr_pad = pad.masked_fill(~(valid | ~has[..., None]), float("-inf"))  # (B, 3, S)
        self.ptr_index = nxt.clamp_min(0).transpose(1, 2).contiguous()  # (B, 3, S)
        self.ptr_has = has.to(keys.dtype)  # (B, 3)
        length = (fields[..., 0] >= 0).sum(dim=1)  # (B,)
        at = length[:, None] + torch.arange(-FIGURE_NOTES - 1, 0, device=keys.device)[None, :]
        tail = fields.gather(1, at.clamp_min(0)[..., None].expand(-1, -1, 3))
        tail = tail.masked_fill((at < 0)[..., None], -1)  # (B, K + 1, 3) the latest notes
        figures = self.weights.pointer_figures
        assert figures is not None
        self.ptr_rows = figures.indices(tail)[:, 1:]  # (B, K, 4) the window's table rows
        self.ptr_last = tail[:, -1, 1:2]  # (B, 1) the latest pitch (-1: none)
        step = 4 * FIGURE_NOTES
        self._bag_ptr = torch.arange(0, step * len(tail), step, device=keys.device)
        # a step's events hold the note's columns + their offsets (`events`): these undo them
        self._ptr_offsets = fields.new_tensor(self.weights.offsets[:3])
        self._figure_query()

    def _figure_query(self) -> None:
        """The figure of the window (`FigureEncoder.forward` at its last note), from the folded
        table: one sum of 4K rows."""
        w = self.weights
        assert w.pointer_figure_rows is not None and w.pointer_figure_offsets is not None
        index = (self.ptr_rows + w.pointer_figure_offsets).view(-1)
        self.ptr_query = F.embedding_bag(index, w.pointer_figure_rows, self._bag_ptr, mode="sum")
        self.ptr_query = self.ptr_query + w.pointer_figure_bias  # (B, H)

    def _figure_append(self, note: torch.Tensor) -> None:
        """The previous note (B, 3) joins the window; the oldest leaves it."""
        figures = self.weights.pointer_figures
        assert figures is not None
        interval = figures.interval(note[:, 1:2], self.ptr_last)  # (B, 1)
        rows = torch.cat([note, interval], dim=1)[:, None, :]  # (B, 1, 4)
        self.ptr_rows = torch.cat([self.ptr_rows[:, 1:], rows], dim=1)
        self.ptr_last = note[:, 1:2]
        self._figure_query()

    @property
    def offsets(self) -> tuple[int, ...]:
        return self.weights.offsets

    def events(self, note: torch.Tensor) -> torch.Tensor:
        """`step`'s input for notes (B, 6) of plain column values (PHRASE last; (B, 5): phrase
        bar 0): (B, 8)."""
        if note.size(1) == PHRASE:
            note = torch.cat([note, torch.zeros_like(note[:, :1])], dim=1)
        offsets = note.new_tensor(self.weights.offsets[:6])
        return torch.cat([note + offsets, self.extras], dim=1)

    def _bags(self, B: int, device: torch.device) -> None:
        # where each row's indices start in the flat index of `embedding_bag` (which sums the
        # rows without the (B, n, 4H) copy that embedding + sum makes)
        self.bag8 = torch.arange(0, 8 * B, 8, device=device)
        self.bag3 = torch.arange(0, 3 * B, 3, device=device)
        n_lag = len(self.weights.lag_offsets)
        self.bag_lag = torch.arange(0, n_lag * B, max(1, n_lag), device=device)
        self.lag_offsets = torch.tensor(self.weights.lag_offsets, device=device, dtype=torch.long)

    def select(self, rows: torch.Tensor) -> None:
        """Keep some rows only (generation drops finished rows)."""
        self._bags(rows.size(0), rows.device)
        self.state = [(h[rows], c[rows]) for h, c in self.state]
        self.extras = self.extras[rows]
        self.start, self.head_bias = self.start[rows], self.head_bias[rows]
        self.values = self.values[rows]
        if self.weights.attn_dec is not None:
            self.keys_t, self.pad = self.keys_t[rows], self.pad[rows]
        if self.pointing:
            self.ptr_keys_t, self.ptr_pad = self.ptr_keys_t[rows], self.ptr_pad[rows]
            self.ptr_index, self.ptr_has = self.ptr_index[rows], self.ptr_has[rows]
            self.ptr_rows, self.ptr_last = self.ptr_rows[rows], self.ptr_last[rows]
            self.ptr_query = self.ptr_query[rows]
            self._bag_ptr = self._bag_ptr[: rows.size(0)]

    @property
    def reads_lags(self) -> bool:
        """Whether `step` reads lag inputs (the model has them)."""
        return self.weights.lag_gates is not None

    def step(self, events: torch.Tensor | None, lags: torch.Tensor | None = None) -> torch.Tensor:
        """One note: events (B, 8) are the previous note's six columns, then `extras`, each
        shifted by its `offsets` (see `events`; None: the START step); lags (B, columns): this
        step's lag inputs (engine.model.lags; None or a model without them: none). Returns
        (B, 4H), the input of the four heads before any field is chosen; advances `state`."""
        w, H = self.weights, self.weights.hidden
        # layer 0's input gates (B, 4H): the sum of the eight columns' table rows
        if events is None:
            x = self.start
        else:
            x = F.embedding_bag(events.view(-1), w.event_gates, self.bag8, mode="sum")
            if self.pointing:  # the previous note joins the figure the pointer matches
                self._figure_append(events[:, :3] - self._ptr_offsets)
        if w.lag_gates is not None and lags is not None:
            index = (lags + self.lag_offsets).view(-1)
            x = x + F.embedding_bag(index, w.lag_gates, self.bag_lag, mode="sum")
        state: State = []
        for layer, (h, c) in enumerate(self.state):
            if layer == 0:
                gates = torch.addmm(x, h, w.hh[0])  # (B, 4H)
            else:
                gates = torch.addmm(torch.addmm(w.bias[layer], x, w.ih[layer]), h, w.hh[layer])
            i, f, o = gates[:, : 3 * H].sigmoid().chunk(3, dim=1)  # (B, H) each
            c = torch.addcmul(f * c, i, gates[:, 3 * H :].tanh())
            x = o * c.tanh()  # (B, H)
            state.append((x, c))
        self.state = state
        if w.attn_dec is not None:
            scores = torch.baddbmm(self.pad, x[:, None, :], self.keys_t)  # (B, 1, S)
            context = torch.bmm(scores.softmax(dim=-1), self.values)[:, 0]  # (B, H)
            x = torch.addmm(torch.addmm(w.attn_bias, x, w.attn_dec), context, w.attn_ctx).tanh()
        return torch.addmm(self.head_bias, x, w.head_in)  # (B, 4H)

    def logits(self, field: int, x: torch.Tensor) -> torch.Tensor:
        """The head of `field` (B, n_field); x: what `step` or the last `choose` returned."""
        w, H = self.weights, self.weights.hidden
        z = x[:, :H]  # (B, H) the head's first layer output / sqrt(2)
        gelu = torch.addcmul(z, z, torch.erf(z))  # GELU x sqrt(2), faster than F.gelu on CPU
        out = torch.addmm(w.head_out_bias[field], gelu, w.head_out[field])
        if self.pointing and field in POINTER_FIELDS:
            return self._point(field, gelu, out)
        return out

    def _point(self, field: int, gelu: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of `field`: the head's logits (B, n) mixed with the pointer over
        the seed (engine.model.pointer.SeedPointer.mix, one note at a time)."""
        w = self.weights
        assert w.pointer_query is not None and w.pointer_gate is not None
        assert w.pointer_gate_bias is not None and w.pointer_sure is not None
        q = torch.addmm(self.ptr_query, gelu, w.pointer_query[field])[:, None, :]  # (B, 1, H)
        scores = torch.baddbmm(self.ptr_pad[:, field : field + 1], q, self.ptr_keys_t)
        attn = scores.softmax(dim=-1)[:, 0]  # (B, S)
        copy = logits.new_zeros(logits.shape).scatter_add_(1, self.ptr_index[:, field], attn)
        gate = torch.addmm(w.pointer_gate_bias[field], gelu, w.pointer_gate[field])
        gate = torch.sigmoid(gate + attn.amax(dim=1, keepdim=True) * w.pointer_sure[field])
        gate = gate * self.ptr_has[:, field : field + 1]  # (B, 1)
        return torch.lerp(logits.softmax(dim=-1), copy, gate).clamp_min(FLOOR).log()

    def choose(self, field: int, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The later heads' input once `field` is chosen: index (B, 1), or for SHIFT (B, 3) the
        shift, the position + offsets[POSITION] and the phrase bar + offsets[PHRASE]. Returns
        (B, H x heads left)."""
        table = self.weights.chosen[field]
        if field == SHIFT:
            extra = F.embedding_bag(index.view(-1), table, self.bag3, mode="sum")  # (B, 3H)
        else:
            extra = table.index_select(0, index.view(-1))
        return x[:, self.weights.hidden :] + extra


def step_weights(model: MotifSeq2Seq) -> StepWeights:
    """The generation tables of the model's current parameters, rebuilt only when a parameter
    changed (another tensor, device or dtype, or an in-place update such as an optimiser step)."""
    stamp = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())
    if model._step_weights is None or model._step_weights[0] != stamp:
        # normal tensors even when asked inside inference mode (continue_batch), since the
        # tables are cached on the model, which may train afterwards
        with torch.inference_mode(False), torch.no_grad():
            model._step_weights = (stamp, StepWeights.of(model))
    return model._step_weights[1]


def batch_decoder(model: MotifSeq2Seq, memory: Memory, style: torch.Tensor) -> BatchDecoder:
    """Generation's decoder for the rows of `memory` (styles (B,)). Inference only: no dropout,
    no gradients."""
    return BatchDecoder(step_weights(model), memory, style)
