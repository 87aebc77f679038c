"""Generation speed: Motif's stateful decoding (one step per note) against the hobby projects'
windowed generation at equal width, on the same seeds; and decode steps per note, Motif's
compound events against miditok's REMI (docs/events.md).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from bench import workload
from bench.baseline import (
    BaselineConfig,
    BaselineLSTM,
    BaselineModel,
    baseline_continue,
    build_vocab,
    onset_symbols,
)
from engine.model.checkpoint import LoadedModel
from engine.model.generate.continuation import continue_seed
from engine.music.notes import Piece

log = logging.getLogger(__name__)


def equal_width_baseline(width: int, pieces: list[Piece], layers: int = 3) -> BaselineModel:
    """The hobby LSTM (float input, `layers` stacked LSTMs, 100-symbol window) at `width`,
    untrained: its speed does not depend on its weights. Vocabulary from `pieces`."""
    cfg = BaselineConfig(width=width, layers=layers)
    vocab = build_vocab(pieces, cfg.max_vocab)
    return BaselineModel(cfg, vocab, BaselineLSTM(cfg, len(vocab)).eval())


def count_calls(obj: Any, method: str, fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn() and count the calls of `obj.method` it makes."""
    original, calls = getattr(obj, method), [0]

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(*args, **kwargs)

    setattr(obj, method, counting)
    try:
        return fn(), calls[0]
    finally:
        delattr(obj, method)


def count_steps(lm: LoadedModel, fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run fn() and count Motif's decoder steps (`BatchDecoder.step` calls: one per note of the
    longest row of a batch, plus one)."""
    from engine.model.generate.batch_decoder import BatchDecoder

    original, calls = BatchDecoder.step, [0]

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, *args, **kwargs)

    BatchDecoder.step = counting  # type: ignore[method-assign]
    try:
        return fn(), calls[0]
    finally:
        BatchDecoder.step = original  # type: ignore[method-assign]


@torch.no_grad()
def decode_steps_per_s(lm: LoadedModel, seed: Piece, steps: int) -> dict[str, float]:
    """The network's own pace at B=1, nothing else: `steps` decoder steps (generation's
    `BatchDecoder`: LSTM layers + attention) from an encoded seed, then the same with the four
    output heads (the whole network cost of one note)."""
    from engine.model.events import PHRASE, POSITION, SHIFT
    from engine.model.generate.batch_decoder import batch_decoder, step_weights
    from engine.model.generate.plan import MAX_SEED_NOTES, seed_key
    from engine.model.train.data import encode_pieces

    model, codec = lm.model.eval(), lm.codec
    seed_events = encode_pieces(codec, [seed]).events[0][-MAX_SEED_NOTES:]  # (S, 6)
    events = torch.from_numpy(seed_events)[None]  # (1, S, 6)
    style = torch.zeros(1, dtype=torch.int64)
    key = torch.tensor([seed_key(seed_events, codec)])
    memory = model.encode(events, torch.tensor([events.size(1)]), style, key)
    last = events[:, -1]  # (1, 6): every step's previous note

    def run(heads: bool) -> None:
        decoder = batch_decoder(model, memory, style)
        offsets = torch.tensor(decoder.offsets[:6])
        prev = torch.cat([last + offsets, decoder.extras], dim=1)  # (1, 8)
        onset = prev[:, [SHIFT, POSITION, PHRASE]]
        chosen = [onset, *(prev[:, f : f + 1] - offsets[f] for f in (1, 2))]
        for _ in range(steps):
            x = decoder.step(prev)  # (1, 4H)
            if heads:
                for field in range(4):
                    decoder.logits(field, x)
                    if field < 3:
                        x = decoder.choose(field, x, chosen[field])

    def encode() -> None:
        model.encode(events, torch.tensor([events.size(1)]), style, key)

    # The floor: one note's matrix products alone, every weight matrix a note reads once (B=1).
    w = step_weights(model)
    mats = [
        m for m in (*w.hh, *w.ih, w.attn_dec, w.attn_ctx, w.head_in, *w.head_out) if m is not None
    ]
    inputs = [torch.randn(1, m.size(0)) for m in mats]

    def matmuls() -> None:
        for _ in range(steps):
            for x, m in zip(inputs, mats, strict=True):
                x @ m

    run(True)  # warm
    t = workload.interleaved(
        {"step": lambda: run(False), "note": lambda: run(True), "encode": encode,
         "matmuls": matmuls}, 3
    )  # fmt: skip
    return {
        "decode_steps_per_s": steps / workload.median([s for s, _ in t["step"]]),
        "network_notes_per_s": steps / workload.median([s for s, _ in t["note"]]),
        "encode_seed_ms": 1000 * workload.median([s for s, _ in t["encode"]]),
        "encode_seed_notes": int(events.size(1)),
        "matmul_floor_ms": 1000 * workload.median([s for s, _ in t["matmuls"]]) / steps,
        "weights_per_note_mib": sum(m.numel() * m.element_size() for m in mats) / 2**20,
    }


def remi_tokens_per_note(pieces: list[Piece]) -> dict[str, float]:
    """Decode steps one note costs under miditok's REMI and CPWord (default configs)."""
    try:
        import symusic
        from miditok import REMI, CPWord, TokenizerConfig
    except ImportError as exc:
        return {"error": f"miditok not installed: {exc}"}
    from engine.music.result_midi import to_midi_bytes

    notes = sum(len(p.notes) for p in pieces)
    out: dict[str, float] = {"pieces": len(pieces), "notes": notes}
    for name, cls in (("remi", REMI), ("cpword", CPWord)):
        tokenizer = cls(TokenizerConfig())
        tokens = 0
        for piece in pieces:
            seqs = tokenizer.encode(symusic.Score.from_midi(to_midi_bytes(piece)))
            seqs = seqs if isinstance(seqs, list) else [seqs]
            tokens += sum(len(s) for s in seqs)
        out[f"{name}_tokens"] = tokens
        out[f"{name}_tokens_per_note"] = tokens / max(1, notes)
    return out


def run(
    repeats: int = 5,
    bars: int = 8,
    n_seeds: int = 4,
    seed_onsets: int = 100,
    decode_steps: int = 200,
    model_path: str | None = None,
    corpus_path: str | None = None,
) -> dict[str, Any]:
    """Notes per second, B=1, median of `repeats` interleaved rounds over `n_seeds` seeds.

    Seeds are the first `seed_onsets` onsets of pieces of each style in turn (100 = the hobby
    window, so the baseline re-runs a full window for every step, as it does from its own
    primers). Motif continues each seed by `bars` bars; the baseline then continues the same
    seed to as many notes. The baseline emits one onset symbol (a note or a whole chord) per
    step and, untrained, its argmax picks chords at random; so its notes/s is its steps/s times
    the seed's own notes per onset, what a trained baseline emits on that music.
    ratio = Motif notes/s / baseline notes/s, per round, median."""
    choice = workload.motif_model(model_path)
    lm = choice.lm
    pieces, music_label = workload.music(max(n_seeds, 16), corpus_path)
    seeds = [workload.first_onsets(p, seed_onsets) for p in pieces[:n_seeds]]
    density = [len(s.notes) / max(1, len(onset_symbols(s))) for s in seeds]
    base = equal_width_baseline(lm.config.hidden, pieces)

    # One untimed pass: warms both, counts both's steps, fixes each seed's note count.
    made, steps = count_steps(
        lm, lambda: [continue_seed(lm, s, bars, seed_rng=i) for i, s in enumerate(seeds)]
    )
    want = [max(1, len(m.notes)) for m in made]
    base_steps = [
        count_calls(base.net, "forward", lambda s=s, n=n: baseline_continue(base, s, n))[1]
        for s, n in zip(seeds, want, strict=True)
    ]
    base_notes = sum(k * d for k, d in zip(base_steps, density, strict=True))

    def motif() -> int:
        return sum(len(continue_seed(lm, s, bars, seed_rng=i).notes) for i, s in enumerate(seeds))

    def baseline() -> float:
        for s, n in zip(seeds, want, strict=True):
            baseline_continue(base, s, n)  # argmax: the same steps every round
        return base_notes

    t = workload.interleaved({"motif": motif, "baseline": baseline}, repeats)
    rate = {k: [n / s for s, n in v] for k, v in t.items()}
    ratios = [m / b for m, b in zip(rate["motif"], rate["baseline"], strict=True)]
    notes = sum(len(m.notes) for m in made)
    tokens = remi_tokens_per_note(pieces)
    return {
        "model": choice.label,
        "music": music_label,
        "repeats": repeats,
        "bars": bars,
        "seeds": len(seeds),
        "seed_onsets": [len(onset_symbols(s)) for s in seeds],
        "notes_per_round": notes,
        "motif_notes_per_s": workload.median(rate["motif"]),
        "baseline_notes_per_s": workload.median(rate["baseline"]),
        "baseline_steps_per_s": workload.median([sum(base_steps) / s for s, _ in t["baseline"]]),
        "baseline_steps_per_round": sum(base_steps),
        "seed_notes_per_onset": [round(d, 2) for d in density],
        "ratio": workload.median(ratios),
        "ratio_target": 20.0,
        "baseline": f"hobby LSTM: width {base.config.width} (= Motif hidden), "
        f"{base.config.layers} layers, window {base.config.window}, argmax, vocab {len(base.vocab)}",
        "motif_steps_per_note": steps / max(1, notes),
        **decode_steps_per_s(lm, seeds[0], decode_steps),
        **{f"tokens_{k}": v for k, v in tokens.items()},
    }


def main() -> None:
    r = run()
    for k, v in r.items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
