"""The honest judge: does each system keep its seed? Side by side on held-out test seeds.

`python -m bench.judge --model engine/data/motif-default.pt --baseline bench/data/baseline.pt`

Columns: Motif (one per `--model`), the hobby baseline (bench/baseline.py), the real
continuation and a chance reference (another held-out piece's real continuation, same length).
With the open ending (the default) the seeds come only from tunes that go on after the bars
continued, so the real continuation is the middle of a tune (bench.evaluate.cut_seed, `middle`);
with `--ending close` the real continuation is a tune's last bars and the seed the bars before
them (bench.evaluate.cut_end), so a closing continuation is compared with a real close.
Rows: engine.model.fidelity's figures (the key by music21's Aarden-Essen, which the generator never
steers by), how often each of Motif's safety nets changed a note, and the seed information gain
(NLL without the seed minus with it, in total and with the seed's key label held fixed).

`--form` adds bench.form's figures (phrase ends, register lift, replayed bars, endings, texture);
`--classifier` adds bench.two_sample's classifier test of each system against the real
continuation, with its two controls in the real and chance columns; `--set airds` judges on
Aird's Airs (bench.airds), a collection the model never trained on, instead of the test split.
See docs/form-judge.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BASELINE, REAL, CHANCE = "hobby LSTM baseline", "real continuation", "chance (another piece's)"
SETS = ("test", "airds", "validation")
SET_LABELS = {
    "test": "held-out test pieces",
    "airds": "tunes of Aird's Airs (1782-1803, music21's airdsAirs; not in the training corpus)",
    "validation": "validation pieces (for developing a change: its figures are not the judge's)",
}
GAIN_LABELS = {
    "gain_total": "seed information gain, nats/note (total)",
    "gain_content": "seed information gain, nats/note (key label held fixed)",
    "nll_with_seed": "NLL of the real continuation with the seed, nats/note",
}


def judge(
    models: Sequence[tuple[str, Path]],
    baseline_path: Path | None,
    corpus_path: Path | None = None,
    *,
    n_seeds: int = 100,
    seed_bars: int = 4,
    bars: int = 8,
    seed: int = 0,
    key_gravity: float | None = None,
    key_penalty: float | None = None,
    gain_windows: int | None = 2000,
    without_copy: bool = False,
    without_strains: bool = False,
    without_texture: bool = False,
    top_p: float | None = None,  # None: bench.evaluate.TOP_P
    ending: str = "open",
    seed_set: str = "test",
    form: bool = False,
    classifier: bool = False,
    control_repeats: int | None = None,  # None: bench.two_sample.CONTROL_REPEATS
) -> dict[str, Any]:
    """Every figure for every system; see the module docstring."""
    import torch

    from bench.evaluate import TOP_P, cut_end, cut_seed, pick_cases, without_near_duplicates

    top_p = TOP_P if top_p is None else top_p
    from bench.safety_nets import SafetyNetCounts
    from engine.model.checkpoint import load_checkpoint
    from engine.model.corpus.load import load_corpus
    from engine.model.fidelity import seed_information_gain, summarize_fidelity
    from engine.model.generate.continuation import continue_seed
    from engine.model.generate.request import KEY_GRAVITY, KEY_PENALTY, Knobs
    from engine.music.metrics import TrainingIndex

    t_start = time.perf_counter()
    corpus = load_corpus(corpus_path)
    train = corpus.pieces("train")
    index = TrainingIndex.from_pieces(train)
    test, dups = without_near_duplicates(set_pieces(seed_set, corpus), index)
    # like for like: an open ending against the middle of a tune (a real continuation that is
    # the tune's end, about 1 in 5 of the corpus's, would be shorter and closing, and told apart
    # by that alone); a closing one against a tune's last bars, seeded by the bars before them
    cut = cut_end if ending == "close" else partial(cut_seed, middle=True)
    cases = pick_cases(test, n_seeds, seed_bars=seed_bars, bars=bars, seed=seed, cut=cut)
    seeds = [c.seed for c in cases]
    bpb = [c.piece.beats_per_bar for c in cases]
    bar_starts = [seed_bars * b for b in bpb]  # where cut_seed cut: continuation bar 1
    conts: dict[str, list] = {}
    nets: dict[str, dict[str, float]] = {}
    gains: dict[str, dict[str, float]] = {}
    seconds: dict[str, float] = {}
    gravity = KEY_GRAVITY if key_gravity is None else key_gravity
    penalty = KEY_PENALTY if key_penalty is None else key_penalty
    knobs = Knobs(key_penalty=penalty, key_gravity=gravity)
    runs = [(label, path, knobs) for label, path in models]
    if without_copy:  # each model again with its copy path off: the network alone
        off = replace(knobs, copy=False)
        runs += [(f"{label} without copying", path, off) for label, path in models]
    if without_strains:  # each model again without the strain plan (engine.model.copy.strains)
        plain = replace(knobs, strains=False)
        runs += [(f"{label} without the strain plan", path, plain) for label, path in models]
    if without_texture:  # each model again without the seed's texture cap (engine.music.texture)
        loose = replace(knobs, texture=False)
        runs += [(f"{label} without the texture cap", path, loose) for label, path in models]
    for label, path, run_knobs in runs:
        lm = load_checkpoint(path)
        styles = lm.codec.config.styles
        counts = SafetyNetCounts()
        t0 = time.perf_counter()
        with torch.no_grad():
            conts[label] = [
                continue_seed(
                    lm,
                    case.seed,
                    bars,
                    style=case.piece.style if case.piece.style in styles else None,
                    temperature=1.0,
                    top_p=top_p,
                    seed_rng=seed * 1_000_003 + i,
                    knobs=run_knobs,
                    ending=ending,
                    observer=counts,
                )
                for i, case in enumerate(cases)
            ]
        seconds[label] = time.perf_counter() - t0
        nets[label] = counts.rates()
        log.info("%s: %d continuations in %.1f s; gain next", label, len(cases), seconds[label])
        with torch.no_grad():
            gains[label] = seed_information_gain(
                lm, test, max_windows=gain_windows, copy=run_knobs.copy
            )
    if baseline_path is not None:
        from bench.baseline import baseline_continue, load_baseline

        bm = load_baseline(baseline_path)
        first = conts[models[0][0]] if models else [c.real for c in cases]
        conts[BASELINE] = [
            baseline_continue(bm, case.seed, max(4, len(made.notes)), rng_seed=seed * 1_000_003 + i)
            for i, (case, made) in enumerate(zip(cases, first, strict=True))
        ]
    conts[REAL] = [c.real for c in cases]
    # chance: the next case's real continuation (another piece, unrelated to this seed)
    conts[CHANCE] = [cases[(i + 1) % len(cases)].real for i in range(len(cases))]
    figures = {
        name: summarize_fidelity(pieces, seeds, beats_per_bar=bpb) for name, pieces in conts.items()
    }
    # the chance continuation keeps its own piece's time frame: its bars start where its seed ends
    starts = {name: bar_starts for name in conts}
    starts[CHANCE] = [bar_starts[(i + 1) % len(cases)] for i in range(len(cases))]
    if form:
        from bench.form import summarize_form

        for name, pieces in conts.items():
            figures[name] |= summarize_form(pieces, seeds, starts[name])
    tests = (
        classifier_tests(conts, seeds, starts, seed=seed, control_repeats=control_repeats)
        if classifier
        else {}
    )
    return {
        "figures": figures,
        "classifier": tests,
        "safety_nets": nets,
        "gain": gains,
        "settings": {
            "models": {label: str(path) for label, path, _ in runs},
            "baseline": str(baseline_path) if baseline_path else None,
            "corpus": str(corpus.path),
            "set": seed_set,
            "n_seeds": len(cases),
            "near_duplicates_left_out": dups,
            "seed_bars": seed_bars,
            "bars": bars,
            "seed": seed,
            "top_p": top_p,
            "key_gravity": gravity,
            "key_penalty": penalty,
            "gain_windows": gain_windows,
            "ending": ending,
            "generate_s": {k: round(v, 1) for k, v in seconds.items()},
            "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - t_start, 1),
        },
    }


def set_pieces(seed_set: str, corpus: Any) -> list[Any]:
    """The pieces whose openings seed the judge: the corpus's test split, or Aird's Airs."""
    if seed_set in ("test", "validation"):
        return corpus.pieces(seed_set)
    if seed_set == "airds":
        from bench.airds import airds_pieces

        return airds_pieces()
    raise ValueError(f"unknown seed set {seed_set!r}; use one of {', '.join(SETS)}")


def classifier_tests(
    conts: dict[str, list[Any]],
    seeds: Sequence[Any],
    starts: dict[str, list[float]],
    *,
    seed: int = 0,
    control_repeats: int | None = None,
) -> dict[str, dict[str, Any]]:
    """System -> feature set -> the better classifier's result (bench.two_sample), as dicts.
    Every made system is tested against the real continuation; the real column holds the control
    real against real, the chance column real against another piece's real continuation."""
    from dataclasses import asdict

    from bench.two_sample import (
        CONTROL_REPEATS,
        FOLDS,
        control_test,
        paired_rows,
        two_sample_test,
    )

    if len(seeds) < 2 * FOLDS:
        log.warning("classifier test skipped: %d seeds, it needs %d", len(seeds), 2 * FOLDS)
        return {}
    real = conts[REAL]
    rows = {
        name: paired_rows(seeds, real, made, starts[name])
        for name, made in conts.items()
        if name not in (REAL, CHANCE)
    }
    out = {}
    for name, these in rows.items():
        log.info("classifier test: %s (%d rows)", name, len(these))
        out[name] = {fs: asdict(r) for fs, r in two_sample_test(these, seed=seed).items()}
    repeats = CONTROL_REPEATS if control_repeats is None else control_repeats
    for name, shuffled in ((REAL, False), (CHANCE, True)):
        log.info("classifier control: %s (%d splits)", name, repeats)
        found = control_test(
            seeds, real, starts[REAL], shuffled=shuffled, seed=seed, repeats=repeats
        )
        out[name] = {fs: asdict(r) for fs, r in found.items()}
    return out


def _fmt(key: str, value: float | None) -> str:
    from bench.form import FORM_COUNT, FORM_PERCENT
    from engine.model.fidelity import FIDELITY_PERCENT

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key in FIDELITY_PERCENT or key in FORM_PERCENT or key == "net":
        return f"{100 * value:.1f}%"
    if key in ("pieces", "polyphonic_seeds", "bass_seeds", *FORM_COUNT):
        return f"{value:.0f}"
    return f"{value:.2f}"


def format_judge(result: dict[str, Any]) -> str:
    """The judge's Markdown table."""
    from bench.form import FORM_LABELS
    from bench.safety_nets import SAFETY_NETS
    from engine.model.fidelity import FIDELITY_LABELS

    s = result["settings"]
    figures = result["figures"]
    systems = list(figures)
    models = list(s["models"])
    seed_set = SET_LABELS[s.get("set", "test")]
    ending = s.get("ending", "open")
    where = (
        f"the {s['seed_bars']} bars before the last {s['bars']}"
        if ending == "close"
        else f"the first {s['seed_bars']} bars"
    )
    cut = "the tune's last bars" if ending == "close" else "in tunes that go on after them"
    lines = [
        f"Seeds: {where} of {s['n_seeds']} {seed_set} "
        f"({s['near_duplicates_left_out']} near-duplicates of training pieces left out); "
        f"{s['bars']} bars continued, {cut}; Motif with the {s.get('ending', 'open')} ending, at temperature 1.0, top-p {s['top_p']}, tonal gravity "
        f"{s['key_gravity']}, key penalty {s.get('key_penalty', '?')}, rng seed {s['seed']}. Chance: the next seed's real continuation.",
        "",
        "| | " + " | ".join(systems) + " |",
        "|---|" + "---:|" * len(systems),
    ]
    for key, label in FIDELITY_LABELS.items():
        row = [_fmt(key, figures[name].get(key)) for name in systems]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    for net in SAFETY_NETS:
        row = [
            _fmt("net", result["safety_nets"][name].get(net)) if name in models else "—"
            for name in systems
        ]
        lines.append(
            f"| share of notes the {net} changes (total variation) | " + " | ".join(row) + " |"
        )
    for key, label in GAIN_LABELS.items():
        row = [
            _fmt(key, result["gain"].get(name, {}).get(key)) if name in models else "—"
            for name in systems
        ]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    if any(k in f for f in figures.values() for k in FORM_LABELS):
        for key, label in FORM_LABELS.items():
            row = [_fmt(key, figures[name].get(key)) for name in systems]
            lines.append(f"| {label} | " + " | ".join(row) + " |")
    if result.get("classifier"):
        lines += _classifier_rows(result["classifier"], systems)
    return "\n".join(lines) + "\n"


def _pct_ci(value: float, ci: Sequence[float]) -> str:
    if math.isnan(value):
        return "—"
    return f"{100 * value:.0f}% ({100 * ci[0]:.0f}–{100 * ci[1]:.0f})"


def _classifier_rows(tests: dict[str, dict[str, Any]], systems: list[str]) -> list[str]:
    """Rows of the classifier two-sample test: per feature set, accuracy and AUC with their 95%
    intervals, which classifier and the features it leans on most."""
    from bench.two_sample import FEATURE_SET_LABELS

    lines = []
    for fs, what in FEATURE_SET_LABELS.items():
        cells = [tests.get(name, {}).get(fs) for name in systems]
        lines.append(
            f"| classifier test, {what} (set {fs}): accuracy, 95% interval | "
            + " | ".join(_pct_ci(c["accuracy"], c["accuracy_ci"]) if c else "—" for c in cells)
            + " |"
        )
        lines.append(
            "| … ROC AUC, 95% interval | "
            + " | ".join(_pct_ci(c["auc"], c["auc_ci"]) if c else "—" for c in cells)
            + " |"
        )
        lines.append(
            "| … the better classifier; features it leans on most | "
            + " | ".join(
                f"{c['classifier']}: {', '.join(c['top_features'])}" if c else "—" for c in cells
            )
            + " |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.judge", description=__doc__)
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="[LABEL=]PATH",
        help="a Motif checkpoint (repeat to compare; default: the shipped model)",
    )
    parser.add_argument("--baseline", type=Path, default=None, help="bench/data/baseline.pt")
    parser.add_argument("--corpus", type=Path, default=None, help="default: the shipped corpus")
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--seed-bars", type=int, default=4)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="random seed (cases and sampling)")
    parser.add_argument("--key-gravity", type=float, default=None, help="default: generation's")
    parser.add_argument("--key-penalty", type=float, default=None, help="default: generation's")
    parser.add_argument("--gain-windows", type=int, default=2000)
    parser.add_argument(
        "--without-copy", action="store_true", help="also judge each model with copying off"
    )
    parser.add_argument(
        "--without-strains",
        action="store_true",
        help="also judge each model without the strain plan (engine.model.copy.strains)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="Motif's top-p (default: the judge's, 0.95); for looking at the sampler on the "
        "validation split",
    )
    parser.add_argument(
        "--without-texture",
        action="store_true",
        help="also judge each model without the seed's texture cap (engine.music.texture)",
    )
    parser.add_argument(
        "--ending",
        choices=("open", "close"),
        default="open",
        help="Motif's ending (default open, against the middle of a tune; close, what /compose "
        "gives by default, against a tune's last bars)",
    )
    parser.add_argument(
        "--set",
        choices=SETS,
        default="test",
        dest="seed_set",
        help="the seeds: the corpus's test split, or Aird's Airs (not in the corpus); "
        "validation: the split a change is developed on, so the test split and Aird's Airs "
        "stay unsteered",
    )
    parser.add_argument("--form", action="store_true", help="add the form figures (bench.form)")
    parser.add_argument(
        "--classifier",
        action="store_true",
        help="add the classifier two-sample test and its controls (bench.two_sample)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from engine.settings import get_settings

    models = []
    for spec in args.model or [str(get_settings().default_model_path)]:
        label, _, path = spec.rpartition("=")
        models.append((f"Motif ({label})" if label else "Motif", Path(path)))
    result = judge(
        models,
        args.baseline,
        args.corpus,
        n_seeds=args.seeds,
        seed_bars=args.seed_bars,
        bars=args.bars,
        seed=args.seed,
        key_gravity=args.key_gravity,
        key_penalty=args.key_penalty,
        gain_windows=args.gain_windows,
        without_copy=args.without_copy,
        without_strains=args.without_strains,
        without_texture=args.without_texture,
        top_p=args.top_p,
        ending=args.ending,
        seed_set=args.seed_set,
        form=args.form,
        classifier=args.classifier,
    )
    text = format_judge(result)
    print(text)
    print(f"wall {result['settings']['wall_s']} s")
    for path, body in ((args.markdown, text), (args.json, None)):
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body if body is not None else json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
