"""The grammar of the batched decoder: the rules every row's notes obey (shift masks, pitch range,
repetition guards, chords), kept as tensors on the model's device."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.model.checkpoint import LoadedModel
from engine.model.events import SHIFT

if TYPE_CHECKING:
    from engine.model.generate.request import Row

MAX_REPEATS = 4  # the same pitch at most this many times in a row
DISTINCT_WINDOW = 32  # any this many consecutive generated notes ...
MIN_DISTINCT = 3  # ... hold at least this many distinct pitches
MAX_CHORD = 6  # notes sharing one onset
RECENT = 8  # the latest notes whose ends the voice rule reads (a bass held under 7 more)


class Grammar:
    """The rules every row's notes obey, as tensors on the device, one row per request.

    All rows decode in lockstep, so at step t every row still decoding has made exactly t notes:
    the rules that depend on the count (the first note's placement, the distinct-pitch window)
    are decided in Python, the rest by tensor ops without reading anything back to the host."""

    def __init__(self, lm: LoadedModel, rows: list[Row], device: torch.device) -> None:
        codec, cfg = lm.codec, lm.codec.config
        B, n_shift, eos = len(rows), codec.n_shift, codec.eos

        def column(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64)[:, None].to(device)  # (B, 1)

        self.max_position = cfg.max_position
        self.n_phrase = lm.config.n_phrase
        self.phrase_origin = column([r.phrase_origin for r in rows])  # (B, 1) bars
        # bars longer than the position classes need the clamp (EventCodec.position)
        self.long_bars = max(r.bar for r in rows) > cfg.max_position + 1
        self.bar = column([r.bar for r in rows])
        self.seed_end = column([r.seed_end for r in rows])
        self.end_tick = column([r.end_tick for r in rows])
        self.tick = column([r.ref_tick for r in rows])  # onset of the last note
        self.onset = self.tick  # onset of this step's note
        self.sound_end = torch.zeros_like(self.tick)  # the latest end of a generated note
        self.done = torch.zeros(B, 1, dtype=torch.bool, device=device)
        self.first_tick = self.tick  # what the first shift counts from (decode's start_tick)
        # shift -> ticks; EOS moves past any end, so "done" is one comparison
        ticks = list(range(n_shift))
        ticks[eos] = 1 << 40
        self.shift_ticks = torch.tensor(ticks, dtype=torch.int64, device=device)
        self.duration_ticks = torch.tensor(cfg.duration_bins, dtype=torch.int64, device=device)

        self.first_shift, self.later_shift = _shift_masks(lm, rows, device)
        # texture: no onset holds more notes than the seed's fullest one (a melody over a bass
        # stays two voices, a chordal seed stays chordal); no seed: MAX_CHORD
        self.chord_cap = column([seed_chord_cap(r.seed_events) for r in rows])
        self.capped = any(seed_chord_cap(r.seed_events) < MAX_CHORD for r in rows)
        # and no fewer sounding than its thinnest onset (a chordal seed stays chordal): while an
        # onset sounds fewer, the next note joins it. `pitch_end`: when each pitch stops sounding
        self.voice_floor = column([r.voice_floor for r in rows])
        self.floored = any(r.voice_floor > 1 for r in rows)
        self.pitch_end = torch.zeros(B, codec.n_pitch, dtype=torch.int64, device=device)
        self.code = torch.zeros_like(self.tick)

        # PITCH state. `soft`: what the range and the repetition guard forbid for the next note.
        # Some pitch is always left unless a row's range is tiny: the guards forbid at most the
        # last pitch, MIN_DISTINCT - 1 window pitches and a chord (MAX_CHORD - 1 pitches).
        most = 1 + (MIN_DISTINCT - 1) + (MAX_CHORD - 1)
        self.fallback = any(int(r.pitch_ok.sum()) <= most for r in rows)
        n_pitch = codec.n_pitch
        self.outside = torch.from_numpy(~np.stack([r.pitch_ok for r in rows])).to(device)
        last = [r.history[-1] if r.history else -1 for r in rows]
        run = []
        for r in rows:  # the seed's own repeats count towards MAX_REPEATS
            k = 0
            while k < len(r.history) and r.history[-1 - k] == r.history[-1]:
                k += 1
            run.append(k)
        self.last, self.run = column(last), column(run)
        self.soft = self._repeat_forbidden(self.last.clamp_min(0))  # (no seed: no last pitch)
        self.last_seen = torch.full((B, n_pitch), -1, dtype=torch.int64, device=device)
        self.chord = torch.zeros(B, n_pitch, dtype=torch.bool, device=device)
        self.chord_kept = self.chord  # this onset's chord when the note joins it
        self.chord_size = torch.zeros_like(self.tick)
        self.same_onset = self.done  # (B, 1) this step's shift is 0
        self._start_voices(rows, n_pitch, device)

    def _start_voices(self, rows: list[Row], n_pitch: int, device: torch.device) -> None:
        """VOICES. A melody over a bass (engine.music.texture.voice_split): a note that sounds
        beside one other keeps to the other voice's side of the split. The latest notes' ends
        (ticks) and pitches tell what sounds at an onset."""
        split = [r.voice_split for r in rows]
        self.voice_split = torch.tensor(split, dtype=torch.int64)[:, None].to(device)  # (B, 1)
        self.voiced = any(v >= 0 for v in split)
        self.recent_end = torch.full((len(rows), RECENT), -1, dtype=torch.int64, device=device)
        self.recent_pitch = torch.zeros(len(rows), RECENT, dtype=torch.int64, device=device)
        self.pitch_index = torch.arange(n_pitch, device=device)[None]  # (1, n_pitch)

    def _repeat_forbidden(self, last: torch.Tensor) -> torch.Tensor:
        """(B, n_pitch): outside the range, or the last pitch (B, 1), where it has come
        MAX_REPEATS times in a row."""
        repeats = self.run >= MAX_REPEATS
        if self.fallback:
            return self.outside | torch.zeros_like(self.outside).scatter_(1, last, repeats)
        # Without the fallback the last pitch is always inside the range: one scatter will do.
        return self.outside.scatter(1, last, repeats)

    def select(self, rows: torch.Tensor) -> None:
        for name in (
            "bar",
            "seed_end",
            "end_tick",
            "tick",
            "onset",
            "sound_end",
            "done",
            "code",
            "phrase_origin",
            "chord_cap",
            "voice_floor",
            "pitch_end",
            "outside",
            "last",
            "run",
            "soft",
            "last_seen",
            "chord",
            "chord_size",
            "voice_split",
            "recent_end",
            "recent_pitch",
        ):
            setattr(self, name, getattr(self, name)[rows])

    def shift_mask(self, t: int) -> torch.Tensor:
        """(B, n_shift) 0 or -inf, for step t."""
        if t == 0:
            return self.first_shift
        mask = self.later_shift.index_select(0, self.code.view(-1))
        if self.capped:  # a zero shift would add a note to a chord already as full as the seed's
            full = (self.chord_size >= self.chord_cap)[:, 0]
            mask[:, 0] = mask[:, 0].masked_fill(full, float("-inf"))
        if self.floored:  # too few notes sound at this onset: the next one joins it
            sounding = (self.pitch_end > self.onset).sum(dim=1, keepdim=True)
            thin = (sounding < self.voice_floor) & (self.chord_size < self.chord_cap)
            mask[:, 1:] = mask[:, 1:].masked_fill(thin, float("-inf"))  # (shift 0 stays open)
        return mask

    def place(self, t: int, shift: torch.Tensor) -> torch.Tensor:
        """The onset of a note `shift` (B, 1) after the last one; rows that reach the end (or
        chose EOS) are done. A first note that would fall inside the seed's last, long note moves
        on by whole bars (the codec's own rule for long gaps). Returns the bar position (B, 1)."""
        onset = self.tick + self.shift_ticks.take(shift)  # (B, 1)
        if t == 0:
            behind = (self.seed_end - onset).clamp_min(0)
            bars = torch.div(behind + self.bar - 1, self.bar, rounding_mode="floor")
            onset = onset + bars * self.bar
            self.first_tick = onset - shift
        self.done = self.done | (onset >= self.end_tick)
        self.onset = onset
        self.same_onset = shift == 0
        # (a done row's position is never used: no need to stop its onset at the end)
        return bar_positions(onset, self.bar, self.max_position if self.long_bars else None)

    def phrase(self) -> torch.Tensor:
        """(B, 1) the bar in the phrase of this step's onset (events.PHRASE); 0 for a model
        without the phrase input."""
        if not self.n_phrase:
            return torch.zeros_like(self.onset)
        bars = torch.div(self.onset, self.bar, rounding_mode="floor") - self.phrase_origin
        return bars.remainder(self.n_phrase)

    def pitch_forbidden(self, t: int) -> torch.Tensor:
        """(B, n_pitch) True where this step's pitch may not go: outside the range, a repeat too
        many, a pitch of a too monotonous window, a pitch already on this onset."""
        if t == 0:
            self.chord_kept = torch.zeros_like(self.chord)  # the first note starts an onset
            forbid = self.soft
        else:
            self.chord_kept = self.chord & self.same_onset
            forbid = self.soft | self.chord_kept
        if self.voiced:
            forbid = self._keep_voices(forbid)
        if self.fallback:  # only reachable with a tiny pitch range
            empty = forbid.all(dim=1, keepdim=True)
            wide = self.outside | self.chord_kept
            wide = wide & ~wide.all(dim=1, keepdim=True)
            forbid = torch.where(empty, wide, forbid)
        return forbid

    def _keep_voices(self, forbid: torch.Tensor) -> torch.Tensor:
        """`forbid` (B, n_pitch) and, where exactly one other note sounds at this onset in a row
        with a voice split, the pitches on that note's side of it (a note beside the bass is the
        melody, beside the melody the bass); unchanged where that would forbid every pitch."""
        sounding = self.recent_end > self.onset  # (B, RECENT): held into this onset, or begun on it
        alone = (sounding.sum(dim=1, keepdim=True) == 1) & (self.voice_split >= 0)
        other = (self.recent_pitch * sounding).sum(dim=1, keepdim=True)  # (B, 1) when alone
        beside_bass = other <= self.voice_split
        side = torch.where(
            beside_bass, self.pitch_index <= self.voice_split, self.pitch_index > self.voice_split
        )
        kept = forbid | (side & alone)
        return torch.where(kept.all(dim=1, keepdim=True), forbid, kept)

    def add_pitch(self, t: int, pitch: torch.Tensor) -> None:
        """Step t's note has pitch (B, 1): update the chord and the repetition guards."""
        self.chord = self.chord_kept.scatter_(1, pitch, True)  # (chord_kept: a fresh tensor)
        self.chord_size = self.chord_size * self.same_onset + 1 if t else torch.ones_like(pitch)
        self.run = self.run * (pitch == self.last) + 1
        self.last = pitch
        self.last_seen.scatter_(1, pitch, t)
        self.soft = self._repeat_forbidden(pitch)
        if t + 2 >= DISTINCT_WINDOW:
            # the next note would close a window of DISTINCT_WINDOW notes: the last
            # DISTINCT_WINDOW - 1 ones must not leave it with fewer than MIN_DISTINCT pitches
            recent = self.last_seen >= t + 2 - DISTINCT_WINDOW  # (B, n_pitch)
            few = recent.sum(dim=1, keepdim=True) < MIN_DISTINCT
            self.soft = self.soft | (recent & few)

    def add_duration(self, duration: torch.Tensor) -> None:
        """Step t's note has duration class (B, 1); the next shift counts from its onset."""
        end = torch.minimum(self.onset + self.duration_ticks.take(duration), self.end_tick)
        self.sound_end = torch.maximum(self.sound_end, end)
        if self.floored:
            self.pitch_end.scatter_(1, self.last, end)
        if self.voiced:  # this note joins the latest ones (the oldest leaves)
            self.recent_end = torch.cat([self.recent_end[:, 1:], end], dim=1)
            self.recent_pitch = torch.cat([self.recent_pitch[:, 1:], self.last], dim=1)
        self.tick = self.onset
        filled = self.sound_end >= self.end_tick
        self.code = torch.add(self.chord_size, filled, alpha=MAX_CHORD + 1)


def seed_chord_cap(events: np.ndarray) -> int:
    """The most notes on one onset of the seed events (N, 5) (its texture), 1 to MAX_CHORD;
    MAX_CHORD without a seed."""
    if not len(events):
        return MAX_CHORD
    onset_starts = np.flatnonzero(np.concatenate(([True], events[1:, SHIFT] != 0)))
    sizes = np.diff(np.concatenate((onset_starts, [len(events)])))
    return int(min(MAX_CHORD, max(1, sizes.max())))


def _shift_masks(
    lm: LoadedModel, rows: list[Row], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The SHIFT masks, additive (0 or -inf): the first note's (B, n_shift), and the later
    notes' by code (2 x (MAX_CHORD + 1), n_shift)."""
    codec, cfg = lm.codec, lm.codec.config
    B, n_shift, eos = len(rows), codec.n_shift, codec.eos
    # The first note: no end yet, and it starts where the seed's sound stops (a longer gap is
    # crossed by whole bars in `place`).
    first = np.zeros((B, n_shift), dtype=np.float32)
    first[:, eos] = -np.inf
    for i, r in enumerate(rows):
        gap = r.seed_end - r.ref_tick
        if not len(r.seed_events):
            first[i, 1:] = -np.inf  # no seed: the music starts at once, no leading silence
        elif gap <= cfg.max_shift:
            first[i, : max(0, gap)] = -np.inf
    # Later notes, by code = chord size + (MAX_CHORD + 1) x (bars filled): no zero shift once
    # the chord is full, no end before the bars are filled. These never forbid max_shift, and
    # the voice floor (`Grammar.shift_mask`) only where a zero shift is open, so a shift mask is
    # never empty.
    later = np.zeros((2, MAX_CHORD + 1, n_shift), dtype=np.float32)
    later[:, MAX_CHORD:, 0] = -np.inf
    later[0, :, eos] = -np.inf
    return torch.from_numpy(first).to(device), torch.from_numpy(later.reshape(-1, n_shift)).to(
        device
    )


def bar_positions(ticks: torch.Tensor, bar: torch.Tensor, max_position: int | None) -> torch.Tensor:
    """`EventCodec.position` of many ticks at once: ticks and bar lengths (in ticks) alike.
    max_position None: every bar is short enough to need no clamp."""
    position = ticks.remainder(bar)
    return position if max_position is None else position.clamp_max_(max_position)
