"""`validate_options`: what a compose request asks for (engine.music.request.ComposeOptions),
checked and normalised before anything is written."""

from __future__ import annotations

import math
import random

from engine.errors import BadParams
from engine.music import catalog
from engine.music.request import ComposeOptions
from engine.settings import Settings, get_settings


def _whole(value: object, low: int, high: int) -> bool:
    """A whole number (not a bool) within [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _style(style: str | None) -> str | None:
    if style is None or style in ("", "none"):
        return None
    if style not in catalog.STYLES:
        raise BadParams(f"unknown style {style!r}; choose one of: {', '.join(catalog.STYLES)}.")
    return style


def _program(instrument: str | int | None) -> int:
    """The General MIDI program of an instrument given by name or program number."""
    if instrument is None or instrument == "":
        return 0
    if isinstance(instrument, int) and not isinstance(instrument, bool):
        if instrument not in catalog.PROGRAM_NAMES:
            raise BadParams("unknown instrument; pick one from the list.")
        return instrument
    if isinstance(instrument, str) and instrument.strip().lower() in catalog.INSTRUMENTS:
        return catalog.INSTRUMENTS[instrument.strip().lower()]
    raise BadParams(
        f"unknown instrument {instrument!r}; choose one of: {', '.join(catalog.INSTRUMENTS)}."
    )


def _ending(ending: str | None) -> str:
    if ending is None:
        return catalog.DEFAULT_ENDING
    if ending not in catalog.ENDINGS:
        raise BadParams(f"ending must be one of: {', '.join(catalog.ENDINGS)}.")
    return ending


def validate_options(
    *,
    bars: int | None = None,
    style: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    instrument: str | int | None = None,
    tempo: float | None = None,
    rng_seed: int | None = None,
    image: str | None = None,
    settings: Settings | None = None,
    from_bar: int | None = None,
    ending: str | None = None,
    reopen_seed: bool = False,
) -> ComposeOptions:
    """Check every option server-side (Discord does not enforce ranges) and normalise it."""
    s = settings or get_settings()
    bars = s.default_bars if bars is None else bars
    if not isinstance(bars, int) or isinstance(bars, bool) or not 1 <= bars <= s.max_bars:
        raise BadParams(f"bars must be a whole number from 1 to {s.max_bars}.")
    style = _style(style)
    temperature = catalog.DEFAULT_TEMPERATURE if temperature is None else float(temperature)
    if not math.isfinite(temperature) or not (
        catalog.MIN_TEMPERATURE <= temperature <= catalog.MAX_TEMPERATURE
    ):
        raise BadParams(
            f"temperature must be between {catalog.MIN_TEMPERATURE} and {catalog.MAX_TEMPERATURE}."
        )
    top_p = catalog.DEFAULT_TOP_P if top_p is None else float(top_p)
    if not math.isfinite(top_p) or not catalog.MIN_TOP_P <= top_p <= catalog.MAX_TOP_P:
        raise BadParams(f"top_p must be between {catalog.MIN_TOP_P} and {catalog.MAX_TOP_P}.")
    program = _program(instrument)
    if tempo is not None:
        tempo = float(tempo)
        if not math.isfinite(tempo) or not catalog.MIN_TEMPO <= tempo <= catalog.MAX_TEMPO:
            raise BadParams(
                f"tempo must be between {catalog.MIN_TEMPO:g} and {catalog.MAX_TEMPO:g} BPM."
            )
    if rng_seed is not None and not _whole(rng_seed, 0, catalog.MAX_RNG_SEED):
        raise BadParams(f"rng_seed must be a whole number from 0 to {catalog.MAX_RNG_SEED}.")
    if image is not None and image not in catalog.INLINE_IMAGES:
        raise BadParams(f"image must be one of: {', '.join(catalog.INLINE_IMAGES)}.")
    if from_bar is not None and not _whole(from_bar, 2, catalog.MAX_FROM_BAR):
        raise BadParams(
            f"from_bar must be a whole number from 2 to {catalog.MAX_FROM_BAR} (the bars before "
            "it are the seed); leave it out to continue from the end."
        )
    return ComposeOptions(
        bars=bars,
        style=style,
        temperature=temperature,
        top_p=top_p,
        instrument=program,
        tempo=tempo,
        rng_seed=rng_seed,
        image=image,
        from_bar=from_bar,
        ending=_ending(ending),
        reopen_seed=bool(reopen_seed),
    )


def follow_up_options(
    asked: ComposeOptions,
    *,
    extend: bool,
    bars: int | None,
    temperature: float | None,
    rng_seed: int | None,
    settings: Settings | None = None,
) -> ComposeOptions:
    """A reroll's, a variation's or an extension's options: its parent's, with what the button
    changes, checked again. A reroll or a variation cuts the same seed; an extension continues
    the whole result (no `from_bar`), from before its cadence when the result closed."""
    return validate_options(
        bars=asked.bars if bars is None else bars,
        style=asked.style,
        temperature=asked.temperature if temperature is None else temperature,
        top_p=asked.top_p,
        instrument=asked.instrument,
        tempo=asked.tempo,
        rng_seed=random.randint(0, catalog.MAX_RNG_SEED) if rng_seed is None else rng_seed,
        image=asked.image,
        settings=settings,
        from_bar=None if extend else asked.from_bar,
        ending=asked.ending,
        reopen_seed=extend and asked.ending == "close",
    )
