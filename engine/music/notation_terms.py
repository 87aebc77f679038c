"""What a notation seed's reader says in the seed's own terms: the constructs it could not read,
and what of the seed the continuation leaves out (chord symbols, grace notes, ornaments).

Motif continues notes: a seed's chord symbols, grace notes and ornaments do not reach the model
or the result's files, and the reply names them instead of dropping them without a word.
Counted on the checked text in the main process, without building a tree.
"""

from __future__ import annotations

import re

# ABC: a chord symbol is a quoted string starting with a note letter (others are annotations:
# "^text", "_text", "<text", ">text", "@text"); a grace group is in braces; decorations are
# !name! or +name+, or the roll shorthand ~.
_ABC_CHORD = re.compile(r'"([A-G][#b]?[^"\n]{0,12})"')
_ABC_GRACE = re.compile(r"\{[^}\n]*\}")
_ABC_DECORATION = re.compile(r"!([a-zA-Z.<>()0-9+-]{1,20})!|\+([a-zA-Z.<>()0-9-]{1,20})\+|~")
_ABC_FIELD = re.compile(r"^\s*(?:[A-Za-z]:|%)")
# MusicXML elements
_XML_COUNTS = {
    "chord symbols": re.compile(rb"<harmony[\s>]"),
    "grace notes": re.compile(rb"<grace[\s/>]"),
    "ornaments": re.compile(
        rb"<(?:trill-mark|turn|inverted-turn|mordent|inverted-mordent|"
        rb"tremolo|shake|schleifer)[\s/>]"
    ),
}
_XML_CHORD_TEXT = re.compile(rb"<root-step>([A-G])</root-step>")


def _abc_body(text: str) -> str:
    """The tune's note lines: no header fields, no comments."""
    return "\n".join(line for line in text.splitlines() if not _ABC_FIELD.match(line))


def _listing(counts: dict[str, int], examples: dict[str, list[str]]) -> str:
    parts = []
    for name, count in counts.items():
        if count:
            seen = list(dict.fromkeys(examples.get(name, [])))[:4]
            parts.append(f"{name} ({count}{': ' + ', '.join(seen) if seen else ''})")
    return ", ".join(parts)


def dropped_remark(kind: str, text: bytes) -> str | None:
    """One sentence naming what of the seed the continuation leaves out, or None."""
    examples: dict[str, list[str]] = {}
    if kind == "abc":
        body = _abc_body(text.decode("utf-8", errors="replace"))
        chords = _ABC_CHORD.findall(body)
        decorations = _ABC_DECORATION.findall(_ABC_CHORD.sub("", body))
        counts = {
            "chord symbols": len(chords),
            "grace notes": len(_ABC_GRACE.findall(body)),
            "ornaments": len(decorations),
        }
        examples["chord symbols"] = chords
        examples["ornaments"] = [a or b or "~ (roll)" for a, b in decorations]
        label = "ABC"
    else:
        counts = {name: len(p.findall(text)) for name, p in _XML_COUNTS.items()}
        label = "MusicXML"
    listing = _listing(counts, examples)
    if not listing:
        return None
    return (
        f"Left out of the {label} seed: {listing}. Motif continues the notes; the seed's file "
        "keeps the rest."
    )


# music21's ABC messages that name a construct, and the same in a musician's words
_ABC_PROBLEMS = (
    (
        re.compile(r"Bad chord indicator: \[(\d)"),
        "its ending [{0}: the ABC reader takes the endings [1, [2 and [3 only",
    ),
    (re.compile(r"Bad chord indicator: (\[[^\s:|]{0,8})"), "`{0}`, a bracket that is not closed"),
    (
        re.compile(r"(?:no|No) (?:closing|matching) .{0,30}?(['\"`\]\)}])"),
        "a `{0}` that is not closed",
    ),
)


def abc_problem(detail: str) -> str | None:
    """What in an ABC tune the reader stopped at, from its error message; None when it does not
    say."""
    for pattern, words in _ABC_PROBLEMS:
        match = pattern.search(detail)
        if match:
            return words.format(*match.groups())
    return None


def no_notes(label: str) -> str:
    """The refusal of a seed that parsed but holds no notes, in the seed's own terms."""
    if label == "ABC":
        return (
            "This ABC tune has no notes to continue: write its melody on the lines after the K: "
            "field."
        )
    return "This MusicXML score has no notes to continue (its parts are empty or only rests)."
