"""Training windows of one scale tune, for the copy-mix and scheduled-sampling tests."""

from __future__ import annotations

import numpy as np
import torch

from engine.model.events import EventCodec
from engine.model.train.data import collate, cut_window, encode_pieces
from engine.music.notes import Note, Piece

CODEC = EventCodec()
PHRASE = (62, 64, 66, 67, 69, 67, 66, 64)


def phrase_windows(
    repeats: int, seed_len: int, cuts: tuple[int, ...] = (8, 16), target_len: int = 16
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(seed, target, style 0) windows cut from PHRASE played `repeats` times in eighths; a
    window past the tune's end holds EOS, then padding."""
    notes = (Note(i * 0.5, 0.5, p, 90) for i, p in enumerate(PHRASE * repeats))
    events = encode_pieces(CODEC, [Piece(tuple(notes))]).events[0]
    return [(*cut_window(events, cut, seed_len, target_len, CODEC.eos), 0) for cut in cuts]


def phrase_batch(repeats: int, seed_len: int) -> dict[str, torch.Tensor]:
    """`collate` of `phrase_windows`, 16 target notes each."""
    return collate(phrase_windows(repeats, seed_len), 16, CODEC)
