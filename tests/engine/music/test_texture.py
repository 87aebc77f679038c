from __future__ import annotations

import pytest

from engine.music.notes import Note
from engine.music.texture import cap_sounding, fewest_sounding, max_sounding, sounding_counts


def _naive_counts(notes):
    onsets = sorted({n.start for n in notes})
    return [sum(n.start <= t + 1e-6 and n.end > t + 1e-6 for n in notes) for t in onsets]


def test_sounding_counts_held_notes_and_not_those_just_ended():
    notes = [Note(0, 2, 48), Note(0, 1, 64), Note(1, 1, 65), Note(2, 1, 67), Note(2.5, 0.5, 60)]
    assert sounding_counts(notes) == [2, 2, 1, 2] == _naive_counts(notes)
    assert max_sounding(notes) == 2 and max_sounding([]) == 0


def test_a_third_voice_is_cut_where_it_would_sound_over_the_cap():
    # a bass held for a bar, a melody, and a middle note held across the melody's next onset
    notes = [Note(0, 4, 43), Note(0, 1, 64), Note(0.5, 2, 55), Note(1, 1, 65), Note(2, 1, 67)]
    capped = cap_sounding(notes, 2)
    assert max(sounding_counts(capped)) <= 2
    by_pitch = {n.pitch: n for n in capped}
    assert by_pitch[43].duration == 4  # the bass, farthest from the new notes, is held
    assert by_pitch[64].duration == 0.5  # at 0.5 the melody's E, nearer the new G, ends
    assert by_pitch[55].end == 1.0  # at 1 the middle voice moves on to the melody's F
    assert [n.start for n in capped] == sorted(n.start for n in capped)


def test_a_chord_on_one_onset_is_kept_and_a_melody_is_made_one_voice():
    chord = [Note(0, 1, 60), Note(0, 1, 64), Note(0, 1, 67)]
    assert cap_sounding(chord, 1) == tuple(chord)  # notes begun together: the decoder's rule
    legato = [Note(0, 1.5, 60), Note(1, 1, 62), Note(2, 1, 64)]
    assert [n.duration for n in cap_sounding(legato, 1)] == [1.0, 1.0, 1.0]
    assert cap_sounding(legato, 2) == tuple(legato)
    with pytest.raises(ValueError):
        cap_sounding(legato, 0)


def test_a_melody_over_a_bass_has_a_split_between_its_voices():
    from engine.music.midi import load_seed
    from engine.music.texture import two_note_onsets, voice_split
    from tests.conftest import example_seed_bytes

    ode = load_seed(example_seed_bytes())  # bass 43-48 under a melody 60-67
    assert voice_split(ode.notes) == 54 and len(two_note_onsets(ode.notes)) == 15
    melody = [Note(i, 1, 60 + i) for i in range(8)]
    assert voice_split(melody) is None  # one voice
    crossing = [Note(0, 1, 48), Note(0, 1, 64), Note(1, 1, 66), Note(1, 1, 52)]
    crossing += [Note(2, 1, 50), Note(2, 1, 60)]
    assert voice_split(crossing) == 56  # between the bass's top (52) and the melody's foot (60)
    crossing += [Note(3, 1, 63), Note(3, 1, 62)]  # the bass climbs above the melody's lowest
    assert voice_split(crossing) is None
    chords = [Note(t, 1, p) for t in range(4) for p in (48, 55, 60, 64)]
    assert voice_split(chords) is None  # four voices


def test_fewest_sounding_skips_the_first_onset_and_counts_held_notes():
    chords = [Note(b, 1.0, p, 80) for b in range(4) for p in (48, 55, 64)]
    assert fewest_sounding(chords) == 3
    pickup = [Note(-1.0, 1.0, 67, 80), *chords]  # a pickup alone does not make it one voice
    assert fewest_sounding(pickup) == 3
    over_a_held_bass = [Note(0.0, 4.0, 36, 80)] + [Note(b, 1.0, 60 + b, 80) for b in range(4)]
    assert fewest_sounding(over_a_held_bass) == 2
    gap = chords + [Note(4.5, 0.5, 72, 80)]  # one lone note later: the floor is 1 (no rule)
    assert fewest_sounding(gap) == 1
    assert fewest_sounding([Note(0.0, 1.0, 60, 80)]) == 0 and fewest_sounding([]) == 0


def test_a_melody_played_legato_is_one_voice():
    # a performed MIDI melody: each note held 0.05 beat into the next, a bass under the first
    legato = [Note(0.0, 2.0, 36, 80)] + [Note(b / 2, 0.55, 60 + b % 5, 80) for b in range(16)]
    assert fewest_sounding(legato) == 1
    assert min(sounding_counts(legato)[1:]) == 2  # what a plain count hears
    held = [Note(0.0, 4.0, 36, 80)] + [Note(b / 2, 0.5, 60 + b % 5, 80) for b in range(8)]
    assert fewest_sounding(held) == 2  # a bass held under all of it is a voice
