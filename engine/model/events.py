"""Motif's compound events: one (N, 5) int row per note, as described in docs/events.md.

`EventCodec` turns a `Piece` into events for the model and model output back into a `Piece`.
numpy only, so the bot and tests can use it without torch.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields

import numpy as np

from engine.music.notes import DURATION_BINS, TICKS_PER_BEAT, Note, Piece

log = logging.getLogger(__name__)

# The event columns, the one home of these names. PHRASE is the bar-in-phrase column that
# training and generation append to the N_COLUMNS the codec writes (docs/events.md): the onset's
# bar counted from the piece's first full bar, modulo PHRASE_BARS (a pickup is the last bar of the
# phrase before); derived from the onsets, never stored in the corpus.
SHIFT, PITCH, DURATION, VELOCITY, POSITION, PHRASE = range(6)
N_COLUMNS = 5
# The copy path's compact event (engine.model.copy): shift, pitch and duration at the events'
# own indices, then the bar position; `COPY_COLUMNS` picks them from an event row.
COPY_COLUMNS = (SHIFT, PITCH, DURATION, POSITION)
COPY_POSITION = COPY_COLUMNS.index(POSITION)
assert COPY_COLUMNS[:3] == (SHIFT, PITCH, DURATION)  # so SHIFT, PITCH, DURATION index both
PHRASE_BARS = 16


def phrase_bars(onsets: np.ndarray, bar: int, first_onset: int, classes: int) -> np.ndarray:
    """(N,) the bar-in-phrase class of each onset tick: the bar counted from the first full bar
    (the one after a pickup that starts at `first_onset`), modulo `classes`; zeros when the model
    has no phrase classes (`classes` 0)."""
    onsets = np.asarray(onsets, dtype=np.int64)
    if classes <= 0:
        return np.zeros(len(onsets), dtype=np.int64)
    origin = -(-int(first_onset) // max(1, bar))  # a pickup's bar is bar -1
    return (onsets // max(1, bar) - origin) % classes


@dataclass(frozen=True)
class TokenizerConfig:
    """Everything that fixes the meaning of an event; saved beside the weights."""

    ticks_per_beat: int = TICKS_PER_BEAT
    max_shift: int = 48
    pitch_low: int = 21
    pitch_high: int = 108
    duration_bins: tuple[int, ...] = DURATION_BINS
    n_velocity: int = 8
    max_position: int = 95
    styles: tuple[str, ...] = ("none", "folk", "celtic", "chorale", "renaissance")

    def __post_init__(self) -> None:
        if self.ticks_per_beat < 1 or self.max_shift < 1 or self.n_velocity < 1:
            raise ValueError("ticks_per_beat, max_shift and n_velocity must be positive")
        if not 0 <= self.pitch_low <= self.pitch_high <= 127:
            raise ValueError(f"bad pitch range {self.pitch_low}..{self.pitch_high}")
        if self.pitch_high - self.pitch_low < 11:
            raise ValueError("the pitch range must span at least an octave (notes are folded)")
        bins = tuple(self.duration_bins)
        if not bins or list(bins) != sorted(set(bins)) or bins[0] < 1:
            raise ValueError("duration_bins must be distinct positive ticks in ascending order")
        if not self.styles or self.styles[0] != "none":
            raise ValueError('styles must start with "none"')

    def to_dict(self) -> dict:
        d = asdict(self)
        d["duration_bins"] = list(self.duration_bins)
        d["styles"] = list(self.styles)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("duration_bins", "styles"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


class EventCodec:
    """Encodes pieces to (N, 5) events and decodes events to pieces, for one `TokenizerConfig`."""

    def __init__(self, config: TokenizerConfig = TokenizerConfig()) -> None:  # noqa: B008
        self.config = config
        self.n_shift = config.max_shift + 2  # 0..max_shift, then EOS
        self.eos = config.max_shift + 1
        self.n_pitch = config.pitch_high - config.pitch_low + 1
        self.n_duration = len(config.duration_bins)
        self.n_velocity = config.n_velocity
        self.n_position = config.max_position + 1
        self.n_style = len(config.styles)
        self._bins = np.asarray(config.duration_bins, dtype=np.int64)
        self._velocities = np.array([self.velocity_of_bin(b) for b in range(self.n_velocity)])

    # --- small pieces of the representation --------------------------------------------------
    def style_index(self, style: str | None) -> int:
        """Conditioning index of a style; None means "none" (0); an unknown name is a ValueError."""
        if style is None:
            return 0
        try:
            return self.config.styles.index(style)
        except ValueError:
            raise ValueError(
                f"unknown style {style!r}; known: {', '.join(self.config.styles)}"
            ) from None

    def bar_ticks(self, time_signature: tuple[int, int]) -> int:
        num, den = time_signature
        if num < 1 or den < 1:
            return self.config.ticks_per_beat * 4
        return max(1, self.config.ticks_per_beat * num * 4 // den)

    def position(self, abs_tick: int, time_signature: tuple[int, int]) -> int:
        return min(self.config.max_position, int(abs_tick) % self.bar_ticks(time_signature))

    def to_ticks(self, beats: float) -> int:
        return int(round(beats * self.config.ticks_per_beat))

    def fold_pitch(self, pitch: int) -> int:
        """Move a pitch by octaves into [pitch_low, pitch_high]."""
        low, high = self.config.pitch_low, self.config.pitch_high
        if pitch < low:
            pitch += 12 * -(-(low - pitch) // 12)
        elif pitch > high:
            pitch -= 12 * -(-(pitch - high) // 12)
        return pitch

    def duration_index(self, ticks: int) -> int:
        """Index of the nearest duration bin (the shorter one on a tie)."""
        return int(np.argmin(np.abs(self._bins - int(ticks))))

    def velocity_bin(self, velocity: int) -> int:
        v = min(127, max(0, int(velocity)))
        return min(self.n_velocity - 1, v * self.n_velocity // 128)

    def velocity_of_bin(self, index: int) -> int:
        """The velocity in the middle of a bin (it maps back to the same bin)."""
        lo = -(-int(index) * 128 // self.n_velocity)
        hi = -(-(int(index) + 1) * 128 // self.n_velocity) - 1
        return min(127, max(1, (lo + hi) // 2))

    # --- the two directions ------------------------------------------------------------------
    def encode(self, piece: Piece, *, start_tick: int = 0) -> np.ndarray:
        """Events (N, 5) int64 for the piece's notes, sorted by (onset, pitch).

        The first shift is measured from `start_tick` (0, or the seed's last onset when
        encoding a continuation). Onsets and durations are rounded to the tick grid; pitches
        outside the range are folded by octaves; identical (onset, pitch) notes keep the longest.
        POSITION is the true bar position of the onset (tick 0 is a downbeat); when generating,
        the running sum of shifts from `start_tick` gives the same value.
        """
        return self.encode_ticks(
            *self.note_ticks(piece), piece.time_signature, start_tick=start_tick
        )

    def note_ticks(self, piece: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The piece's onsets and durations on the tick grid (`to_ticks` of each), pitches and
        velocities: four int64 arrays in the piece's note order."""
        notes = piece.notes
        tpb = self.config.ticks_per_beat
        return (
            np.rint(np.array([n.start for n in notes], dtype=np.float64) * tpb).astype(np.int64),
            np.rint(np.array([n.duration for n in notes], dtype=np.float64) * tpb).astype(np.int64),
            np.array([n.pitch for n in notes], dtype=np.int64),
            np.array([n.velocity for n in notes], dtype=np.int64),
        )

    def encode_ticks(
        self,
        onsets: np.ndarray,
        durations: np.ndarray,
        pitches: np.ndarray,
        velocities: np.ndarray,
        time_signature: tuple[int, int],
        *,
        start_tick: int = 0,
    ) -> np.ndarray:
        """`encode` for notes already on the tick grid, as four equal-length arrays (fast path
        for the corpus: no `Note` objects)."""
        cfg = self.config
        onsets = np.asarray(onsets, dtype=np.int64).reshape(-1)
        durations = np.maximum(1, np.asarray(durations, dtype=np.int64).reshape(-1))
        pitches = np.asarray(pitches, dtype=np.int64).reshape(-1)
        velocities = np.clip(np.asarray(velocities, dtype=np.int64).reshape(-1), 0, 127)
        low, high = cfg.pitch_low, cfg.pitch_high
        pitches = np.where(pitches < low, pitches + 12 * -((pitches - low) // 12), pitches)
        pitches = np.where(pitches > high, pitches - 12 * -((high - pitches) // 12), pitches)

        # (onset, pitch) order; of identical (onset, pitch) notes the longest (then first) wins.
        order = np.lexsort((-durations, pitches, onsets))
        onsets, durations = onsets[order], durations[order]
        pitches, velocities = pitches[order], velocities[order]
        first = np.ones(len(onsets), dtype=bool)
        first[1:] = (np.diff(onsets) != 0) | (np.diff(pitches) != 0)
        onsets, durations = onsets[first], durations[first]
        pitches, velocities = pitches[first], velocities[first]

        bar = self.bar_ticks(time_signature)
        placed = np.maximum(int(start_tick), onsets)  # a note before start_tick sits on it
        previous = np.concatenate(([int(start_tick)], placed[:-1]))
        gaps = placed - previous
        # A gap longer than max_shift loses whole bars (bar positions stay true) or is clamped.
        long = gaps > cfg.max_shift
        shorter = gaps - -((cfg.max_shift - gaps) // bar) * bar
        shifts = np.where(long, np.where(shorter >= 0, shorter, cfg.max_shift), gaps)

        events = np.empty((len(onsets), N_COLUMNS), dtype=np.int64)
        events[:, SHIFT] = shifts
        events[:, PITCH] = pitches - low
        events[:, DURATION] = np.abs(self._bins[None, :] - durations[:, None]).argmin(axis=1)
        events[:, VELOCITY] = np.minimum(self.n_velocity - 1, velocities * self.n_velocity // 128)
        events[:, POSITION] = np.minimum(cfg.max_position, placed % bar)
        return events

    def decode(
        self,
        events: np.ndarray,
        *,
        start_tick: int = 0,
        tempo_bpm: float = 120.0,
        time_signature: tuple[int, int] = (4, 4),
        program: int = 0,
        style: str | None = None,
        name: str = "",
    ) -> Piece:
        """The piece that events (N, >=4) describe, up to the first EOS; POSITION is ignored."""
        cfg = self.config
        arr = np.asarray(events, dtype=np.int64)
        if arr.ndim != 2 or (arr.shape[0] and arr.shape[1] < 4):
            raise ValueError(f"events must have shape (N, 4 or 5), not {arr.shape}")
        eos_rows = np.flatnonzero(arr[:, SHIFT] == self.eos) if len(arr) else []
        if len(eos_rows):
            arr = arr[: eos_rows[0]]
        for col, size, label in (
            (SHIFT, self.n_shift - 1, "shift"),
            (PITCH, self.n_pitch, "pitch"),
            (DURATION, self.n_duration, "duration"),
            (VELOCITY, self.n_velocity, "velocity"),
        ):
            if len(arr) and (arr[:, col].min() < 0 or arr[:, col].max() >= size):
                raise ValueError(f"{label} class out of range 0..{size - 1}")
        tpb = cfg.ticks_per_beat
        onsets = int(start_tick) + np.cumsum(arr[:, SHIFT]) if len(arr) else np.zeros(0, np.int64)
        pitches = arr[:, PITCH] + cfg.pitch_low
        order = np.lexsort((pitches, onsets))  # (start, pitch) order, stable
        notes = [
            Note(start=s, duration=d, pitch=p, velocity=v)
            for s, d, p, v in zip(
                (onsets[order] / tpb).tolist(),
                (self._bins[arr[order, DURATION]] / tpb).tolist(),
                pitches[order].tolist(),
                self._velocities[arr[order, VELOCITY]].tolist(),
                strict=True,
            )
        ]
        return Piece(
            notes=tuple(notes),
            tempo_bpm=float(tempo_bpm),
            time_signature=(int(time_signature[0]), int(time_signature[1])),
            program=int(program),
            name=name,
            style=style,
        )
