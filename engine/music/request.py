"""What a compose request asks for: `ComposeOptions`, the one request type from the command or
the cog, through the request row (its `params`), to the decoder (which reads it inside
engine.model.generate.request.GenerationRequest). Checked by engine.service.options.
validate_options before anything is written. No torch (the bot builds it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from engine.music import catalog
from engine.music.notes import Piece


@dataclass(frozen=True)
class ComposeOptions:
    bars: int = 8
    style: str | None = None  # None: the seed's style if it has one, else "none"
    temperature: float = catalog.DEFAULT_TEMPERATURE
    top_p: float = catalog.DEFAULT_TOP_P
    instrument: int = 0  # General MIDI program of the result (the seed plays it too)
    tempo: float | None = None  # BPM override; None keeps the seed's
    rng_seed: int | None = None  # None: a fresh one (recorded when the request is queued)
    image: str | None = None  # the picture shown inline: "score" | "pianoroll"; None: the setting
    from_bar: int | None = None  # the seed is the file's bars before this one; None: all of it
    ending: str = catalog.DEFAULT_ENDING  # "close" | "open" (engine.music.endings)
    reopen_seed: bool = False  # an extension of a closed result: continue before its cadence

    def to_params(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ComposeOptions:
        known = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        return cls(**known)

    def seed_as_asked(self, seed: Piece) -> Piece:
        """The seed in the instrument and tempo asked (the result plays both parts alike); the
        decoder gives the continuation the same (engine.model.generate.continuation)."""
        return replace(seed, program=self.instrument, tempo_bpm=self.tempo or seed.tempo_bpm)
