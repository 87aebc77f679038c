"""`python -m bench.evaluate`: Motif against the hobby LSTM baseline and real held-out music, side by side.

Seeds are the opening bars of held-out test pieces; both systems continue them and every figure of
`engine.music.metrics` is measured on the continuations and on what the pieces really do next.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from engine.model.fidelity import FIDELITY_LABELS, FIDELITY_PERCENT, summarize_fidelity
from engine.music.metrics import FIGURE_LABELS, TrainingIndex, interval_tokens, summarize
from engine.music.notes import Piece

log = logging.getLogger(__name__)

MOTIF, BASELINE, REAL = "Motif", "hobby LSTM baseline", "real held-out music"
EQUAL_WIDTH = "hobby LSTM baseline at Motif's width"
TEMPERATURE, TOP_P = 1.0, 0.95
PRECISIONS = ("bfloat16", "float16")  # `--half`: the likelihood again in each
NLL_MAX_WINDOWS = 2000  # Motif's fixed evaluation windows (64 notes each), evenly thinned
# A held-out piece sharing this many consecutive notes (intervals and lengths) with one training
# piece is a near-duplicate (the same tune filed twice, a chorale harmonised twice): it is left
# out of the seeds and the likelihoods, which would otherwise reward memorising.
NEAR_DUPLICATE_RUN = 32


@dataclass(frozen=True)
class SeedCase:
    """One held-out piece cut in two: the seed both systems continue and what really follows."""

    piece: Piece
    seed: Piece
    real: Piece  # the next `bars` bars of the piece


def cut_seed(piece: Piece, seed_bars: int, bars: int, *, middle: bool = False) -> SeedCase | None:
    """The first `seed_bars` bars as the seed and the `bars` after them as the real continuation;
    None when either part has fewer than 4 notes (too short to judge a key or a collapse), and
    with `middle` also when the piece does not go on after them: the real continuation is then
    the tune's end (shorter, and closing), not the middle of a tune that an open ending is
    compared with."""
    seed_end = seed_bars * piece.beats_per_bar
    cont_end = seed_end + bars * piece.beats_per_bar
    seed = piece.notes_between(end=seed_end)
    real = piece.notes_between(seed_end, cont_end)
    if len(seed) < 4 or len(real) < 4:
        return None
    if middle and not piece.notes_between(cont_end):
        return None
    return SeedCase(
        piece=piece,
        seed=replace(piece, notes=seed, name=f"{piece.name} (seed)"),
        real=replace(piece, notes=real, name=f"{piece.name} (real continuation)"),
    )


def cut_end(piece: Piece, seed_bars: int, bars: int) -> SeedCase | None:
    """A tune's last `bars` bars as the real continuation and the `seed_bars` before them as the
    seed, both moved to start at 0: what a closing continuation is compared with (bars count from
    the tune's first bar line, its last bar perhaps short). None when the tune is shorter than
    both or either part has fewer than 4 notes."""
    bpb = piece.beats_per_bar
    if not piece.notes:
        return None
    last_bar = math.ceil(piece.end_beat / bpb - 1e-9)
    start = (last_bar - bars - seed_bars) * bpb  # the seed's first bar line
    if start < 0:
        return None
    moved = tuple(replace(n, start=n.start - start) for n in piece.notes if n.start >= start - 1e-9)
    excerpt = replace(piece, notes=moved, metre_changes=(), key_changes=())
    return cut_seed(excerpt, seed_bars, bars)


def without_near_duplicates(
    pieces: Sequence[Piece], index: TrainingIndex, run: int = NEAR_DUPLICATE_RUN
) -> tuple[list[Piece], int]:
    """The pieces that share no `run` consecutive notes with a training piece, and how many
    were left out."""
    kept = [p for p in pieces if not index.contains_run(interval_tokens(p), run)]
    return kept, len(pieces) - len(kept)


def pick_cases(
    pieces: Sequence[Piece],
    n: int,
    *,
    seed_bars: int,
    bars: int,
    seed: int = 0,
    cut: Callable[[Piece, int, int], SeedCase | None] = cut_seed,
) -> list[SeedCase]:
    """`n` held-out pieces, in a random order fixed by `seed`, that `cut` (`cut_seed`, or
    `cut_end`, ...) cuts into a seed and a continuation (fewer, with a warning, when the split
    has fewer)."""
    order = np.random.default_rng(seed).permutation(len(pieces))
    cases: list[SeedCase] = []
    for i in order:
        case = cut(pieces[int(i)], seed_bars, bars)
        if case is not None:
            cases.append(case)
            if len(cases) == n:
                break
    if len(cases) < n:
        log.warning("only %d of %d held-out pieces are long enough to seed", len(cases), n)
    return cases


@dataclass
class EvalReport:
    """Everything `format_report` prints; `to_dict` is the JSON form."""

    quality: dict[
        str, dict[str, float]
    ]  # system -> figure (engine.music.metrics.summarize) -> value
    nll: dict[str, dict[str, float]]  # row -> {"validation": ..., "test": ...}
    speed: dict[str, float]  # system -> notes generated per second
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ContinueFn = Callable[[SeedCase, int], Piece]  # (case, case number) -> continuation
BaselineFn = Callable[[SeedCase, int, int], Piece]  # (case, case number, n notes) -> continuation


def compare(
    cases: Sequence[SeedCase],
    motif: ContinueFn,
    baseline: BaselineFn | None,
    training_index: TrainingIndex | None,
) -> tuple[dict[str, dict[str, float]], dict[str, float], dict[str, list[Piece]]]:
    """Continue every case with Motif, then the baseline with as many notes as Motif made, and
    summarise both and the real continuations against the held-out pieces.
    Returns (figures per system, notes per second per system, continuations per system)."""
    conts: dict[str, list[Piece]] = {MOTIF: [], REAL: [c.real for c in cases]}
    seconds = {MOTIF: 0.0}
    for i, case in enumerate(cases):
        t0 = time.perf_counter()
        conts[MOTIF].append(motif(case, i))
        seconds[MOTIF] += time.perf_counter() - t0
    if baseline is not None:
        conts[BASELINE], seconds[BASELINE] = [], 0.0
        for i, (case, made) in enumerate(zip(cases, conts[MOTIF], strict=True)):
            t0 = time.perf_counter()
            conts[BASELINE].append(baseline(case, i, len(made.notes)))
            seconds[BASELINE] += time.perf_counter() - t0

    seeds = [c.seed for c in cases]
    reference = [c.piece for c in cases]
    bpb = [c.piece.beats_per_bar for c in cases]
    figures = {
        name: {
            **summarize(pieces, seeds, reference, training_index),
            **summarize_fidelity(pieces, seeds, beats_per_bar=bpb),  # does it keep its seed?
        }
        for name, pieces in conts.items()
    }
    speed = {
        name: sum(len(p.notes) for p in conts[name]) / s if s > 0 else math.nan
        for name, s in seconds.items()
    }
    return figures, speed, conts


def equal_width_speed(
    bm: Any, hidden: int, cases: Sequence[SeedCase], made: Sequence[Piece], n_cases: int = 10
) -> float:
    """Decode steps per second of the baseline's windowed generation at Motif's hidden size
    (random weights: the speed does not depend on them) on the first cases, as many notes as
    Motif made. Steps, not notes: random weights may pick chords, several notes in one step;
    both systems spend one step per note of a melody."""
    from bench.baseline import BaselineLSTM, BaselineModel, baseline_continue

    cfg = replace(bm.config, width=hidden)
    wide = BaselineModel(cfg, bm.vocab, BaselineLSTM(cfg, len(bm.vocab)).eval(), bm.primers)
    steps, t0 = 0, time.perf_counter()
    for case, piece in list(zip(cases, made, strict=True))[:n_cases]:
        out = baseline_continue(wide, case.seed, len(piece.notes))
        steps += len({n.start for n in out.notes})  # one step per onset
    seconds = time.perf_counter() - t0
    return steps / seconds if seconds > 0 else math.nan


def evaluate(
    model_path: str | Path,
    baseline_path: str | Path | None,
    corpus_path: str | Path | None = None,
    n_seeds: int = 100,
    bars: int = 8,
    seed: int = 0,
    *,
    seed_bars: int = 4,
    nll_max_windows: int | None = NLL_MAX_WINDOWS,
    key_gravity: float | None = None,
    with_nll: bool = True,
    precisions: Sequence[str] = (),
) -> EvalReport:
    """Measure the model at `model_path` (and the baseline, if given) on `n_seeds` test pieces of
    the corpus: the first `seed_bars` bars seed a continuation of `bars` bars. Motif samples with
    temperature 1.0 and top-p 0.95, seeded per case from `seed`, so a run repeats exactly."""
    import torch

    from bench.baseline import baseline_continue, baseline_nll, load_baseline, unigram_nll
    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.model.generate.continuation import continue_seed
    from engine.model.generate.request import KEY_GRAVITY, Knobs

    gravity = KEY_GRAVITY if key_gravity is None else key_gravity

    try:
        from engine.model.train.step import evaluate_nll
    except ImportError as exc:  # training code is optional at evaluation time
        log.warning(
            "no engine.model.train.step.evaluate_nll (%s): Motif's NLL from its checkpoint", exc
        )
        evaluate_nll = None

    t_start = time.perf_counter()
    corpus = load_corpus(Path(corpus_path) if corpus_path else None)
    train, validation, test = (corpus.pieces(s) for s in ("train", "validation", "test"))
    lm = load_checkpoint(model_path)
    styles = lm.codec.config.styles
    bm = load_baseline(baseline_path) if baseline_path else None
    index = TrainingIndex.from_pieces(train)
    validation, dup_validation = without_near_duplicates(validation, index)
    test, dup_test = without_near_duplicates(test, index)
    log.info(
        "corpus: %d train, %d validation, %d test pieces (%d and %d near-duplicates of training "
        "pieces left out)",
        len(train),
        len(validation),
        len(test),
        dup_validation,
        dup_test,
    )

    def motif(case: SeedCase, i: int) -> Piece:
        style = case.piece.style if case.piece.style in styles else None
        return continue_seed(
            lm,
            case.seed,
            bars,
            style=style,
            temperature=TEMPERATURE,
            top_p=TOP_P,
            seed_rng=seed * 1_000_003 + i,
            knobs=Knobs(key_gravity=gravity),
        )

    def baseline(case: SeedCase, i: int, n_notes: int) -> Piece:
        return baseline_continue(bm, case.seed, n_notes, rng_seed=seed * 1_000_003 + i)

    cases = pick_cases(test, n_seeds, seed_bars=seed_bars, bars=bars, seed=seed)
    log.info("continuing %d seeds (index of %d training notes)", len(cases), index.tokens.size)
    with torch.no_grad():
        quality, speed, conts = compare(cases, motif, baseline if bm else None, index)
        if bm is not None:
            speed[EQUAL_WIDTH] = equal_width_speed(bm, lm.config.hidden, cases, conts[MOTIF])

    log.info("likelihoods")
    rows = ("motif", "motif_pitch", "baseline_note", "baseline_symbol", "baseline_unk")
    nll: dict[str, dict[str, float]] = {
        row: {} for row in (*rows, "unigram_event", "unigram_pitch")
    }
    for split, pieces in (("validation", validation), ("test", test)) if with_nll else ():
        if evaluate_nll is not None:
            motif_nll = evaluate_nll(lm, pieces, max_windows=nll_max_windows)
        else:  # the trainer's own figures on the same splits
            short = {"validation": "val"}.get(split, split)
            motif_nll = dict(lm.meta.get("metrics", {}).get(short) or {})
        nll["motif"][split] = motif_nll.get("nll_per_note", math.nan)
        nll["motif_pitch"][split] = motif_nll.get("nll_pitch", math.nan)
        for name in precisions if evaluate_nll is not None else ():
            # the same windows with the model's weights and arithmetic in half precision
            half = evaluate_nll(lm, pieces, max_windows=nll_max_windows, dtype=getattr(torch, name))
            nll.setdefault(f"motif_{name}", {})[split] = half.get("nll_per_note", math.nan)
        if bm is not None:
            b = baseline_nll(bm, pieces)
            nll["baseline_symbol"][split] = b.per_symbol
            nll["baseline_note"][split] = b.per_note
            nll["baseline_unk"][split] = b.unk_rate
        uni = unigram_nll(train, pieces, lm.codec)
        nll["unigram_pitch"][split] = uni["pitch"]
        nll["unigram_event"][split] = uni["event"]
    nll = {row: values for row, values in nll.items() if values}

    return EvalReport(
        quality=quality,
        nll=nll,
        speed=speed,
        settings={
            "model": str(model_path),
            "model_meta": {k: lm.meta[k] for k in ("version", "created", "steps") if k in lm.meta},
            "baseline": str(baseline_path) if baseline_path else None,
            "baseline_meta": dict(bm.meta) if bm else None,
            "corpus": str(corpus.path),
            "corpus_hash": corpus.content_hash[:16],
            "n_seeds": len(cases),
            "near_duplicates_left_out": {"validation": dup_validation, "test": dup_test},
            "seed_bars": seed_bars,
            "bars": bars,
            "seed": seed,
            "temperature": TEMPERATURE,
            "top_p": TOP_P,
            "key_gravity": gravity,
            "motif_hidden": lm.config.hidden,
            "motif_nll_source": "evaluate_nll" if evaluate_nll else "checkpoint meta",
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
    )


# --- the table ----------------------------------------------------------------------------------

_PERCENT = {"collapse_rate", "key_kept_rate", *FIDELITY_PERCENT}
_INTEGER = {"n", "copied_run_max", "pieces", "polyphonic_seeds", "bass_seeds"}


def _fmt(key: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key in _PERCENT:
        return f"{100 * value:.0f}%"
    if key in _INTEGER:
        return f"{value:.0f}"
    return f"{value:.2f}"


def _left_out(settings: dict[str, Any]) -> str:
    dups = settings.get("near_duplicates_left_out") or {}
    return (
        f"near-duplicates of training pieces left out: {dups.get('test', '?')} test, "
        f"{dups.get('validation', '?')} validation"
    )


def format_report(report: EvalReport) -> str:
    """The report as Markdown: the quality table (Motif | baseline | real music), the likelihood
    table and the settings that produced them."""
    s = report.settings
    systems = [name for name in (MOTIF, BASELINE, REAL) if name in report.quality]
    lines = [
        f"Seeds: the first {s.get('seed_bars', '?')} bars of {s.get('n_seeds', '?')} held-out "
        f"test pieces ({_left_out(s)}); {s.get('bars', '?')} bars continued. Motif samples at "
        f"temperature {s.get('temperature', TEMPERATURE)}, top-p {s.get('top_p', TOP_P)} (rng "
        f"seed {s.get('seed', 0)}), tonal gravity {s.get('key_gravity', '?')}; the baseline "
        "decodes by argmax on a fixed 0.5-beat grid and makes as many notes as Motif did.",
        "",
        "| | " + " | ".join(systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for key, label in FIGURE_LABELS.items():
        if key == "n":
            continue
        if key == "key_kept_rate":
            label += ", Krumhansl–Kessler (the estimator tonal gravity steers by)"
        row = [_fmt(key, report.quality[name].get(key)) for name in systems]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for key, label in FIDELITY_LABELS.items():  # seed fidelity (python -m bench.judge: more)
        if key == "pieces" or not any(key in report.quality[name] for name in systems):
            continue
        row = [_fmt(key, report.quality[name].get(key)) for name in systems]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    speed = [_fmt("speed", report.speed.get(name)) for name in systems]
    lines.append("| generation speed, notes/s (one request, CPU) | " + " | ".join(speed) + " |")
    if EQUAL_WIDTH in report.speed and BASELINE in systems:
        row = [
            _fmt("speed", report.speed.get(MOTIF)),
            _fmt("speed", report.speed[EQUAL_WIDTH]),
        ] + ["—"] * (len(systems) - 2)
        width = s.get("motif_hidden", "same")
        lines.append(
            f"| decode steps/s at equal width (hidden {width}; one step per melody note) | "
            + " | ".join(row)
            + " |"
        )

    n = report.nll
    nll_rows = [
        ("motif", "Motif, per note event (timing + pitch + length + loudness, and the end)"),
        *(
            (f"motif_{name}", f"Motif, per note event, weights and arithmetic in {name}")
            for name in PRECISIONS
        ),
        ("motif_pitch", "Motif, pitch field only, per note"),
        ("baseline_note", "hobby baseline, per note (pitch symbols only)"),
        ("baseline_symbol", "hobby baseline, per onset symbol (a chord is one symbol)"),
        ("unigram_event", "unigram, per note event (same four fields as Motif, and the end)"),
        ("unigram_pitch", "unigram, per note (pitch only)"),
    ]
    if not n:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Negative log-likelihood of held-out music, nats (lower is better). Only rows that "
        "predict the same things compare: Motif's four fields with the four-field unigram; "
        "pitch with pitch (Motif's pitch field, the baseline per note, the pitch unigram). The "
        "baseline's number is not directly comparable with Motif's per-note figure: it predicts "
        "no timing, length or loudness, and scores unseen chords as one cheap <unk>.",
        "",
        "| | validation | test |",
        "|---|---:|---:|",
    ]
    for key, label in nll_rows:
        if n.get(key):
            lines.append(
                f"| {label} | {_fmt(key, n[key].get('validation'))} "
                f"| {_fmt(key, n[key].get('test'))} |"
            )
    if n.get("baseline_unk"):
        unk = n["baseline_unk"]
        lines.append(
            f"| hobby baseline: held-out symbols outside its vocabulary (<unk>) "
            f"| {_fmt('collapse_rate', unk.get('validation'))} "
            f"| {_fmt('collapse_rate', unk.get('test'))} |"
        )
    return "\n".join(lines) + "\n"


# --- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__)
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    parser.add_argument("--baseline", type=Path, default=None, help="bench/data/baseline.pt")
    parser.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed-bars", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="random seed (cases and sampling)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--key-gravity",
        type=float,
        default=None,
        help="Motif's tonal gravity (default: generation's, 0 since motif-default-v3)",
    )
    parser.add_argument("--no-nll", action="store_true", help="skip the likelihood table")
    parser.add_argument(
        "--half",
        action="store_true",
        help="also score Motif with its weights in bfloat16 and in float16 (does half precision "
        "hurt quality?)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from engine.settings import get_settings

    report = evaluate(
        args.model or get_settings().default_model_path,
        args.baseline,
        args.corpus,
        n_seeds=args.seeds,
        bars=args.bars,
        seed=args.seed,
        seed_bars=args.seed_bars,
        key_gravity=args.key_gravity,
        with_nll=not args.no_nll,
        precisions=PRECISIONS if args.half else (),
    )
    text = format_report(report)
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
