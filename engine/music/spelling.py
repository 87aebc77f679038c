"""Pitch spelling in a key: the key signature's sharps or flats, each pitch class's note name,
and the accidentals a reader needs, measure by measure."""

from __future__ import annotations

_STEPS = "CDEFGAB"
_STEP_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SHARP_ORDER = "FCGDAEB"
_MAJOR_FIFTHS = {0: 0, 7: 1, 2: 2, 9: 3, 4: 4, 11: 5, 6: 6, 1: -5, 8: -4, 3: -3, 10: -2, 5: -1}
_ACCIDENTAL = {-2: "flat-flat", -1: "flat", 0: "natural", 1: "sharp", 2: "double-sharp"}


def key_fifths(tonic: int, mode: str) -> int:
    """Sharps (+) or flats (-) of the key signature of a (tonic pitch class, mode) key."""
    return _MAJOR_FIFTHS[(tonic + (3 if mode == "minor" else 0)) % 12]


def _key_alters(fifths: int) -> dict[str, int]:
    """The alteration the key signature gives each step."""
    alters = dict.fromkeys(_STEPS, 0)
    for step in _SHARP_ORDER[:fifths] if fifths > 0 else _SHARP_ORDER[::-1][:-fifths]:
        alters[step] = 1 if fifths > 0 else -1
    return alters


def spelling(fifths: int) -> dict[int, tuple[str, int]]:
    """(step, alter) for each pitch class: the key's own notes as the signature spells them,
    others natural where they can be, else sharp in sharp keys and flat in flat keys."""
    table: dict[int, tuple[str, int]] = {}
    for step, alter in _key_alters(fifths).items():
        table[(_STEP_PC[step] + alter) % 12] = (step, alter)
    for pc in range(12):
        if pc in table:
            continue
        natural = next((s for s in _STEPS if _STEP_PC[s] == pc), None)
        if natural is not None:
            table[pc] = (natural, 0)
        elif fifths >= 0:
            table[pc] = (next(s for s in _STEPS if _STEP_PC[s] == pc - 1), 1)
        else:
            table[pc] = (next(s for s in _STEPS if _STEP_PC[s] == (pc + 1) % 12), -1)
    return table


class Speller:
    """Pitch spelling and the accidentals a reader needs, measure by measure."""

    def __init__(self, fifths: int) -> None:
        self.table = spelling(fifths)
        self.signature = _key_alters(fifths)
        self.shown: dict[tuple[int, str, int], int] = {}  # (staff, step, octave): alter

    def new_measure(self) -> None:
        self.shown = {}

    def note(self, pitch: int, staff: int, tied: bool) -> tuple[str, int, int, str | None]:
        step, alter = self.table[pitch % 12]
        octave = (pitch - alter - _STEP_PC[step]) // 12 - 1
        current = self.shown.get((staff, step, octave), self.signature[step])
        accidental = None
        if alter != current and not tied:
            accidental = _ACCIDENTAL[alter]
        self.shown[(staff, step, octave)] = alter
        return step, alter, octave, accidental
