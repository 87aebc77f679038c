"""What users may ask for: styles, instruments and option ranges. No torch (the bot reads it)."""

from __future__ import annotations

# Style labels come from the corpus collection a piece belongs to (see engine.model.corpus).
STYLES: tuple[str, ...] = ("folk", "celtic", "chorale", "renaissance")

# A General MIDI selection for chat (Discord allows at most 25 choices per option).
INSTRUMENTS: dict[str, int] = {
    "piano": 0,
    "bright piano": 1,
    "electric piano": 4,
    "harpsichord": 6,
    "celesta": 8,
    "music box": 10,
    "vibraphone": 11,
    "marimba": 12,
    "church organ": 19,
    "accordion": 21,
    "nylon guitar": 24,
    "steel guitar": 25,
    "clean electric guitar": 27,
    "acoustic bass": 32,
    "violin": 40,
    "cello": 42,
    "string ensemble": 48,
    "choir aahs": 52,
    "trumpet": 56,
    "french horn": 60,
    "alto sax": 65,
    "oboe": 68,
    "clarinet": 71,
    "flute": 73,
    "pan flute": 75,
}
PROGRAM_NAMES: dict[int, str] = {v: k for k, v in INSTRUMENTS.items()}

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.1, 2.0
MIN_TOP_P, MAX_TOP_P = 0.1, 1.0
# What a request gets when it does not say (the options, generation and the bot's embeds).
DEFAULT_TEMPERATURE, DEFAULT_TOP_P = 1.0, 0.95
MIN_TEMPO, MAX_TEMPO = 30.0, 300.0  # what a request may ask for (and the corpus is clamped to)
# What a seed file may carry: wider than what a request may ask, so odd but real files still load
# (their tempo is kept); beyond this the file is refused as absurd.
SEED_MIN_TEMPO, SEED_MAX_TEMPO = 20.0, 400.0
# The most bars an operator may allow per request (MOTIF_MAX_BARS, MOTIF_DEFAULT_BARS); the
# generator's own sanity bound (engine.model.generate.request.MAX_BARS) lies above it.
MAX_BARS_CEILING = 256
MAX_RNG_SEED = 2**31 - 1

# The picture a result shows inline; the other one is attached behind a spoiler (one click).
INLINE_IMAGES: tuple[str, ...] = ("score", "pianoroll")
# How a continuation ends (engine.music.endings): a held tonic-chord note, or left open to extend
ENDINGS: tuple[str, ...] = ("close", "open")
DEFAULT_ENDING = "close"
MAX_FROM_BAR = 100_000  # /compose from_bar: the bars before it are the seed
# request notes (engine.music.midi.seed_notices) that a reply shows the user, in this order
SEED_NOTICES = ("from_bar", "seed_cropped", "drums_left_out", "metre_clamped")
