"""The seq2seq LSTM that continues a melody, one compound note event per step.

An encoder LSTM reads the seed's events; a decoder LSTM, started from the encoder's final state,
and conditioned on the style and on the seed's estimated key (key classes: see
`engine.model.generate.plan.seed_key`), predicts the next note's SHIFT, PITCH, DURATION and
VELOCITY with one head each, every head seeing the fields already chosen for that note. Training
runs the decoder as one `nn.LSTM` call (cuDNN on GPU); generation runs `BatchDecoder`
(engine.model.generate.batch_decoder), the same network rearranged for one note at a time
(tests/engine/model/test_network.py keeps the plain reference step, with `nn.LSTMCell`s that
share the LSTM's weight tensors, as the oracle).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.model.events import PHRASE, POSITION, SHIFT
from engine.model.lags import lag_sizes
from engine.model.pointer import POINTER_FIELDS, SeedPointer, next_fields, seed_fields

log = logging.getLogger(__name__)

# Event columns: one home, engine.model.events (docs/events.md); the first four are predicted,
# in this order.
FIELDS = ("shift", "pitch", "duration", "velocity")
IGNORE = -100  # target value of a field that is not predicted (after EOS, padding)

State = list[tuple[torch.Tensor, torch.Tensor]]  # (h, c) per decoder layer, each (B, H)


@dataclass
class ModelConfig:
    # vocabulary sizes, from the EventCodec
    n_shift: int  # includes EOS (the last class)
    n_pitch: int
    n_duration: int
    n_velocity: int
    n_position: int
    n_style: int
    n_key: int = 0  # 0: no key conditioning; 25: "unknown" + 12 major + 12 minor keys
    n_phrase: int = 0  # 0: no PHRASE input; else bar-in-phrase classes (events.PHRASE_BARS)
    lag_inputs: bool = False  # the decoder reads the lag inputs (engine.model.lags)
    pointer: bool = False  # a learnt copy path over the seed (engine.model.pointer)
    # width
    d_embed: int = 256
    hidden: int = 384
    layers: int = 2  # encoder and decoder each
    dropout: float = 0.1
    attention: bool = True

    @classmethod
    def for_codec(cls, codec, **sizes) -> ModelConfig:
        return cls(
            n_shift=codec.n_shift,
            n_pitch=codec.n_pitch,
            n_duration=codec.n_duration,
            n_velocity=codec.n_velocity,
            n_position=codec.n_position,
            n_style=codec.n_style,
            **sizes,
        )


@dataclass
class Memory:
    """What the decoder needs from the encoder."""

    values: torch.Tensor  # (B, S, H) encoder outputs
    keys: torch.Tensor | None  # (B, S, H) projected for Luong "general" scores; None: no attention
    mask: torch.Tensor  # (B, S) True where a real seed step is
    state: State  # the decoder's initial (h, c) per layer
    key: torch.Tensor  # (B,) key class of the seed (0: unknown)
    pointer_keys: torch.Tensor | None = None  # (B, S, H) the pointer's keys; None: no pointer
    pointer_seed: torch.Tensor | None = None  # (B, S, 3) the seed's fields (pointer.seed_fields)

    def select(self, rows: torch.Tensor) -> Memory:
        """The memory of some rows only (generation drops rows that have finished)."""
        return Memory(
            values=self.values[rows],
            keys=None if self.keys is None else self.keys[rows],
            mask=self.mask[rows],
            state=[(h[rows], c[rows]) for h, c in self.state],
            key=self.key[rows],
            pointer_keys=None if self.pointer_keys is None else self.pointer_keys[rows],
            pointer_seed=None if self.pointer_seed is None else self.pointer_seed[rows],
        )


class EventEmbedding(nn.Module):
    """A note event as the sum of its five column embeddings plus the style and key embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        sizes = (cfg.n_shift, cfg.n_pitch, cfg.n_duration, cfg.n_velocity, cfg.n_position)
        self.columns = nn.ModuleList(nn.Embedding(n, cfg.d_embed) for n in sizes)
        self.style = nn.Embedding(cfg.n_style, cfg.d_embed)
        self.key = nn.Embedding(cfg.n_key, cfg.d_embed) if cfg.n_key else None
        # where the note's bar sits in the phrase (events.PHRASE); zero-initialised, so adding it
        # to a trained model changes nothing until it is trained
        self.phrase = nn.Embedding(cfg.n_phrase, cfg.d_embed) if cfg.n_phrase else None
        if self.phrase is not None:
            nn.init.zeros_(self.phrase.weight)
        # the decoder's lag inputs (engine.model.lags), zero-initialised as `phrase`
        self.lag = None
        if cfg.lag_inputs:
            lags = lag_sizes(cfg.n_shift, cfg.n_pitch, cfg.n_duration)
            tables = [nn.Embedding(n, cfg.d_embed) for n in lags]
            for table in tables:
                nn.init.zeros_(table.weight)
            self.lag = nn.ModuleList(tables)
        self.start = nn.Parameter(torch.zeros(cfg.d_embed))  # decoder input before the first note
        self.no_seed = nn.Parameter(torch.zeros(cfg.d_embed))  # the one encoder step of no seed
        for emb in [*self.columns, self.style, *([self.key] if self.key else [])]:
            nn.init.normal_(emb.weight, std=0.3)  # seven summed: keep the LSTM gates unsaturated
        nn.init.normal_(self.start, std=0.3)
        nn.init.normal_(self.no_seed, std=0.3)

    def conditioning(self, style: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """What every step adds: style (B,) and key (B,) -> (B, D)."""
        cond = self.style(style)
        return cond + self.key(key) if self.key is not None else cond

    def forward(self, events: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        # events (B, T, 5 or 6) int64 (no negative values), cond (B, D) -> (B, T, D)
        x = cond[:, None, :]  # (B, 1, D)
        for col, emb in enumerate(self.columns):
            x = x + emb(events[..., col])
        if self.phrase is not None and events.size(-1) > PHRASE:
            x = x + self.phrase(events[..., PHRASE])
        return x

    def lagged(self, x: torch.Tensor, lags: torch.Tensor | None) -> torch.Tensor:
        """x (B, T, D) plus the embeddings of the lag inputs (B, T, columns); x unchanged for a
        model without them or without `lags`."""
        if self.lag is None or lags is None:
            return x
        for col, emb in enumerate(self.lag):
            x = x + emb(lags[..., col])
        return x


class NoteHeads(nn.Module):
    """Factorised output: SHIFT, then PITCH given the shift (and the bar position it lands on),
    DURATION given both, VELOCITY given all three."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        H = cfg.hidden
        sizes = (cfg.n_shift, cfg.n_pitch, cfg.n_duration, cfg.n_velocity)
        self.out = nn.ModuleList(
            nn.Sequential(nn.Linear(H, H), nn.GELU(), nn.Linear(H, n)) for n in sizes
        )
        # embeddings of chosen fields, added to the context of the later heads
        self.chosen = nn.ModuleList(
            nn.Embedding(n, H) for n in (cfg.n_shift, cfg.n_pitch, cfg.n_duration)
        )
        self.chosen_position = nn.Embedding(cfg.n_position, H)
        for emb in [*self.chosen, self.chosen_position]:
            nn.init.normal_(emb.weight, std=0.1)
        # the bar-in-phrase the shift lands on (zero-initialised, as EventEmbedding.phrase)
        self.chosen_phrase = nn.Embedding(cfg.n_phrase, H) if cfg.n_phrase else None
        if self.chosen_phrase is not None:
            nn.init.zeros_(self.chosen_phrase.weight)

    def logits(self, field: int, ctx: torch.Tensor) -> torch.Tensor:
        return self.out[field](ctx)  # (..., H) -> (..., n_field)

    def condition(self, field: int, ctx: torch.Tensor, note: torch.Tensor) -> torch.Tensor:
        """The context for the next head once `field` of `note` (..., 5) has been chosen."""
        ctx = ctx + self.chosen[field](note[..., field])
        if field == SHIFT:  # the shift fixes the note's bar position (and bar in the phrase) too
            ctx = ctx + self.chosen_position(note[..., POSITION])
            if self.chosen_phrase is not None and note.size(-1) > PHRASE:
                ctx = ctx + self.chosen_phrase(note[..., PHRASE])
        return ctx

    def forward(self, o: torch.Tensor, note: torch.Tensor, point: Any = None) -> list[torch.Tensor]:
        # o (B, T, H), note (B, T, 5 or 6) teacher-forced -> 4 x (B, T, n_field); point:
        # (field, hidden, logits) -> log-probabilities, the pointer's mix (None: no pointer)
        ctx, out = o, []
        for field in range(4):
            if point is not None and field in POINTER_FIELDS:
                first, act, last = cast(nn.Sequential, self.out[field])
                hidden = act(first(ctx))
                out.append(point(field, hidden, last(hidden)))
            else:
                out.append(self.logits(field, ctx))
            if field < 3:
                ctx = self.condition(field, ctx, note)
        return out


class MotifSeq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        D, H, L = cfg.d_embed, cfg.hidden, cfg.layers
        drop = cfg.dropout if L > 1 else 0.0
        self.embed = EventEmbedding(cfg)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(
            nn.LSTM(D if layer == 0 else H, H, batch_first=True) for layer in range(L)
        )
        self.bridge_h = nn.Linear(H, H)
        self.bridge_c = nn.Linear(H, H)
        self.decoder = nn.LSTM(D, H, L, batch_first=True, dropout=drop)
        if cfg.attention:
            self.attn_key = nn.Linear(H, H, bias=False)
            self.attn_out = nn.Linear(2 * H, H)
        self.heads = NoteHeads(cfg)
        sizes = (cfg.n_shift, cfg.n_pitch, cfg.n_duration)
        self.pointer = SeedPointer(sizes, H) if cfg.pointer else None
        # the key also feeds the heads directly: "in this key, these pitches" is one table
        self.head_key = nn.Embedding(cfg.n_key, H) if cfg.n_key else None
        if self.head_key is not None:
            nn.init.normal_(self.head_key.weight, std=0.1)
        # (parameter stamp, tables): generation's cache, kept by engine.model.generate.batch_decoder
        self._step_weights: tuple[tuple, Any] | None = None

    # --- encoder -----------------------------------------------------------------------------
    def _key(self, key: torch.Tensor | None, style: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(style) if key is None or self.config.n_key == 0 else key

    def encode(
        self,
        seed: torch.Tensor,
        seed_len: torch.Tensor,
        style: torch.Tensor,
        key: torch.Tensor | None = None,
    ) -> Memory:
        """seed (B, S, 5 or 6) right-padded, seed_len (B,), style (B,), key (B,) (None: unknown).
        An empty seed (length 0) is encoded as one learned "no seed" step."""
        B = seed.size(0)
        key = self._key(key, style)
        cond = self.embed.conditioning(style, key)  # (B, D)
        if seed.size(1) == 0:
            seed = seed.new_zeros(B, 1, seed.size(2))
        x = self.embed(seed.clamp_min(0), cond)  # (B, S, D)
        empty = (seed_len == 0)[:, None]  # (B, 1)
        first = torch.where(empty, self.embed.no_seed + cond, x[:, 0])  # (B, D)
        x = torch.cat([first[:, None, :], x[:, 1:]], dim=1)  # (B, S, D)
        lengths = seed_len.clamp_min(1)
        last = (lengths - 1)[:, None, None].expand(B, 1, self.config.hidden)  # (B, 1, H)
        # Padding comes after the real steps, so running over it changes nothing before; one
        # LSTM per layer gives every layer's state at each row's last real step without packing
        # (packed sequences fall off the fast oneDNN/cuDNN kernels).
        state: State = []
        for lstm in self.encoder:
            x, _ = lstm(self.drop(x))  # (B, S, H)
            h = x.gather(1, last)[:, 0]  # (B, H)
            state.append((torch.tanh(self.bridge_h(h)), self.bridge_c(h)))
        mask = torch.arange(x.size(1), device=x.device)[None, :] < lengths[:, None]  # (B, S)
        keys = self.attn_key(x) if self.config.attention else None
        memory = Memory(values=x, keys=keys, mask=mask, state=state, key=key)
        if self.pointer is not None:
            memory.pointer_seed = seed_fields(seed, seed_len)
            memory.pointer_keys = self.pointer.keys(memory.pointer_seed, x)
        return memory

    def attend(self, dec: torch.Tensor, memory: Memory) -> torch.Tensor:
        """Luong "general" attention over the seed. dec (B, T, H) -> (B, T, H)."""
        if memory.keys is None:
            return dec
        scores = dec @ memory.keys.transpose(1, 2) / math.sqrt(dec.size(-1))  # (B, T, S)
        scores = scores.masked_fill(~memory.mask[:, None, :], float("-inf"))
        weights = F.softmax(scores.float(), dim=-1).to(dec.dtype)  # (B, T, S)
        context = weights @ memory.values  # (B, T, H)
        return torch.tanh(self.attn_out(torch.cat([dec, context], dim=-1)))  # (B, T, H)

    # --- training: teacher forcing through nn.LSTM ---------------------------------------------
    def forward(
        self,
        seed: torch.Tensor,
        seed_len: torch.Tensor,
        style: torch.Tensor,
        target: torch.Tensor,
        key: torch.Tensor | None = None,
        lags: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
    ) -> list[torch.Tensor]:
        """Logits of every field of every target note, given the seed and the true previous
        notes. target (B, T, 5) with IGNORE where a field is not predicted (after EOS); lags
        (B, T, columns): each step's lag inputs (engine.model.lags; None: none); inputs (B, T,
        5): the previous notes to feed instead of the target's (None: the target's; see
        engine.model.train.scheduled.sampled_inputs); returns [shift, pitch, duration, velocity]
        logits, each (B, T, n_field)."""
        memory = self.encode(seed, seed_len, style, key)
        cond = self.embed.conditioning(style, memory.key)  # (B, D)
        note = target.clamp_min(0)  # (B, T, 5)
        history = target if inputs is None else inputs
        prev = self.embed(history.clamp_min(0)[:, :-1], cond)  # (B, T-1, D)
        x = torch.cat([(self.embed.start + cond)[:, None, :], prev], dim=1)  # (B, T, D)
        x = self.embed.lagged(x, lags)
        h0 = torch.stack([h for h, _ in memory.state])  # (L, B, H)
        c0 = torch.stack([c for _, c in memory.state])  # (L, B, H)
        out, _ = self.decoder(self.drop(x), (h0.contiguous(), c0.contiguous()))  # (B, T, H)
        o = self._head_input(self.drop(self.attend(out, memory)), memory)  # (B, T, H)
        return self.heads(o, note, self._pointing(memory, seed_len, history))

    def _pointing(self, memory: Memory, seed_len: torch.Tensor, target: torch.Tensor) -> Any:
        """The heads' pointer mix over this memory's seed; None for a model without one."""
        pointer, keys, fields = self.pointer, memory.pointer_keys, memory.pointer_seed
        if pointer is None or keys is None or fields is None:
            return None
        query = pointer.figure_queries(fields, seed_len, target)  # (B, T, H)
        nxt = next_fields(fields)
        return lambda field, hidden, logits: pointer.mix(field, hidden, logits, keys, query, nxt)

    def _head_input(self, o: torch.Tensor, memory: Memory) -> torch.Tensor:
        if self.head_key is None:
            return o
        k = self.head_key(memory.key)  # (B, H)
        return o + (k[:, None, :] if o.dim() == 3 else k)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
