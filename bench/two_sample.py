"""A classifier two-sample test: can a classifier tell Motif's continuation from the real one?

Per case, one real continuation (label 0) and one Motif continuation (label 1), described by two
feature sets: A, the continuation alone (`alone_features`); B, the continuation against its seed
(`relative_features`). Logistic regression and gradient boosting (scikit-learn), cross-validated
with folds grouped by piece (StratifiedGroupKFold, 5 folds); accuracy and ROC AUC of the out-of-fold
predictions, with 95% bootstrap intervals over pieces. 50% means the classes look alike.

Controls (`control_test`, averaged over random splits of `control_rows`): the real
continuations split at random into two labels (must give about 50% on both sets), and the real
continuation against another piece's real continuation paired with this seed (about 50% on A,
where both are real music, and well above on B, where the second does not belong to its seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from bench.form import (
    bar_index,
    bar_notes,
    beat_length,
    ends_on_tonic,
    held_in_bar,
    replayed_bars,
    seed_key,
    sounding_per_onset,
)
from engine.model.fidelity import grid_overlap, pattern_reuse, same_or_relative
from engine.music.metrics import _as_notes, longest_repeat, top_line
from engine.music.notes import Note, Piece

FOLDS = 5
BOOTSTRAP = 1000
CONTROL_REPEATS = 10  # random splits a control is averaged over
# Duration classes in quarter notes: (upper bound, name), a note falls in the first that holds it.
DURATION_CLASSES = (
    (0.26, "sixteenth"),
    (0.34, "triplet"),
    (0.51, "eighth"),
    (0.76, "dotted eighth"),
    (1.01, "quarter"),
    (1.51, "dotted quarter"),
    (2.01, "half"),
    (math.inf, "longer"),
)
# Top-line intervals in semitones: (name, test).
INTERVAL_CLASSES: tuple[tuple[str, Callable[[int], bool]], ...] = (
    ("repeat", lambda i: i == 0),
    ("semitone up", lambda i: i == 1),
    ("semitone down", lambda i: i == -1),
    ("tone up", lambda i: i == 2),
    ("tone down", lambda i: i == -2),
    ("third up", lambda i: i in (3, 4)),
    ("third down", lambda i: i in (-3, -4)),
    ("fourth-fifth up", lambda i: 5 <= i <= 7),
    ("fourth-fifth down", lambda i: -7 <= i <= -5),
    ("leap up", lambda i: i > 7),
    ("leap down", lambda i: i < -7),
)


def duration_shares(notes: Sequence[Note]) -> np.ndarray:
    """Share of the notes in each of DURATION_CLASSES."""
    counts = np.zeros(len(DURATION_CLASSES))
    for n in notes:
        counts[next(i for i, (top, _) in enumerate(DURATION_CLASSES) if n.duration < top)] += 1
    return counts / counts.sum() if counts.sum() else counts


def interval_shares(notes: Sequence[Note]) -> np.ndarray:
    """Share of the top line's intervals in each of INTERVAL_CLASSES."""
    steps = np.diff([n.pitch for n in top_line(notes)]).tolist()
    counts = np.array([sum(test(s) for s in steps) for _, test in INTERVAL_CLASSES], float)
    return counts / len(steps) if steps else counts


def zigzag_rate(notes: Sequence[Note]) -> float:
    """Share of consecutive top-line interval pairs that change direction."""
    steps = [s for s in np.diff([n.pitch for n in top_line(notes)]).tolist() if s != 0]
    if len(steps) < 2:
        return 0.0
    return sum(a * b < 0 for a, b in zip(steps, steps[1:], strict=False)) / (len(steps) - 1)


def _tv(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance of two histograms (normalised here)."""
    if a.sum() == 0 or b.sum() == 0:
        return 1.0
    return float(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())


def _pc_hist(notes: Sequence[Note]) -> np.ndarray:
    hist = np.zeros(12)
    for n in notes:
        hist[n.pitch % 12] += n.duration
    return hist


def _notes_per_bar(notes: Sequence[Note], bar_start: float, bpb: float) -> float:
    """Notes per bar over the bars up to the last onset's (a long last note adds no bar)."""
    if not notes:
        return 0.0
    return len(notes) / max(1, bar_index(notes[-1].start, bar_start, bpb))


def alone_features(continuation: Piece, bar_start: float) -> dict[str, float]:
    """Set A: the continuation alone (what a listener hears without the seed)."""
    notes = _as_notes(continuation)
    bpb = continuation.beats_per_bar
    beat = beat_length(continuation.time_signature)
    pitches = [n.pitch for n in notes]
    top = [n.pitch for n in top_line(notes)]
    f: dict[str, float] = {
        "notes per bar": _notes_per_bar(notes, bar_start, bpb),
        "range": float(max(pitches) - min(pitches)) if pitches else 0.0,
        "distinct pitches": float(len(set(pitches))),
        "longest repeat": float(longest_repeat(top)),
        "repeat run 3+": float(longest_repeat(top) >= 3),
        "zig-zag rate": zigzag_rate(notes),
        "notes per onset": len(notes) / max(1, len({round(n.start * 12) for n in notes})),
        "sounding per onset": sounding_per_onset(notes) if notes else 0.0,
    }
    for b in (4, 8):
        f[f"held bar {b}"] = float(held_in_bar(notes, b, bar_start, bpb, beat))
        f[f"notes bar {b}"] = float(len(bar_notes(notes, b, bar_start, bpb)))
    for (_, name), share in zip(DURATION_CLASSES, duration_shares(notes), strict=True):
        f[f"duration {name}"] = float(share)
    for (name, _), share in zip(INTERVAL_CLASSES, interval_shares(notes), strict=True):
        f[f"interval {name}"] = float(share)
    return f


RELATIVE_NAMES = (
    "register lift",
    "top-note lift",
    "bottom-note lift",
    "figures recurring",
    "bars replayed",
    "bars replayed or transposed",
    "duration distance",
    "interval distance",
    "pitch-class distance",
    "key kept",
    "ends on tonic",
    "notes per bar ratio",
    "texture ratio",
    "grid overlap",
    "outside range",
)


def relative_features(seed: Piece, continuation: Piece, bar_start: float) -> dict[str, float]:
    """Set B: the continuation against its seed (what a listener hears after the seed)."""
    notes, seed_notes = _as_notes(continuation), _as_notes(seed)
    if not notes or not seed_notes:  # nothing to compare: the imputer fills these in
        return dict.fromkeys(RELATIVE_NAMES, math.nan)
    pitches, seed_pitches = [n.pitch for n in notes], [n.pitch for n in seed_notes]
    verbatim, moved, bars = replayed_bars(seed, notes, bar_start)
    reuse = pattern_reuse(seed_notes, notes)
    seed_spo = sounding_per_onset(seed_notes)
    return {
        "register lift": float(np.mean(pitches) - np.mean(seed_pitches)),
        "top-note lift": float(max(pitches) - max(seed_pitches)),
        "bottom-note lift": float(min(pitches) - min(seed_pitches)),
        "figures recurring": 0.0 if math.isnan(reuse) else reuse,
        "bars replayed": verbatim / bars if bars else 0.0,
        "bars replayed or transposed": moved / bars if bars else 0.0,
        "duration distance": _tv(duration_shares(seed_notes), duration_shares(notes)),
        "interval distance": _tv(interval_shares(seed_notes), interval_shares(notes)),
        "pitch-class distance": _tv(_pc_hist(seed_notes), _pc_hist(notes)),
        "key kept": float(same_or_relative(seed_key(seed_notes), seed_key(notes))),
        "ends on tonic": float(
            ends_on_tonic(notes, seed_key(seed_notes), beat_length(continuation.time_signature))
        ),
        "notes per bar ratio": _notes_per_bar(notes, bar_start, continuation.beats_per_bar)
        / _notes_per_bar(seed_notes, 0.0, seed.beats_per_bar),
        "texture ratio": sounding_per_onset(notes) / seed_spo,
        "grid overlap": _nan0(grid_overlap(seed_notes, notes)),
        "outside range": float(
            np.mean([not min(seed_pitches) <= p <= max(seed_pitches) for p in pitches])
        ),
    }


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


FEATURE_SETS = ("A", "B")
FEATURE_SET_LABELS = {"A": "continuation alone", "B": "continuation against its seed"}


@dataclass(frozen=True)
class Row:
    """One sample of the test: a seed, a continuation, where its bars start, its label and the
    piece it belongs to (the cross-validation group)."""

    seed: Piece
    continuation: Piece
    bar_start: float
    label: int
    group: int


def feature_matrix(rows: Sequence[Row], feature_set: str) -> tuple[np.ndarray, list[str]]:
    """(X, feature names) of one feature set."""
    dicts = [
        alone_features(r.continuation, r.bar_start)
        if feature_set == "A"
        else relative_features(r.seed, r.continuation, r.bar_start)
        for r in rows
    ]
    names = list(dicts[0])
    return np.array([[d[k] for k in names] for d in dicts], dtype=float), names


def _classifiers(seed: int) -> dict[str, object]:
    from sklearn.ensemble import GradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "logistic regression": make_pipeline(
            SimpleImputer(strategy="median"),
            StandardScaler(),
            LogisticRegression(C=1.0, max_iter=2000),
        ),
        "gradient boosting": make_pipeline(
            SimpleImputer(strategy="median"),
            GradientBoostingClassifier(n_estimators=100, max_depth=2, random_state=seed),
        ),
    }


@dataclass(frozen=True)
class TestResult:
    """One classifier on one feature set: out-of-fold accuracy and AUC with 95% intervals."""

    classifier: str
    accuracy: float
    accuracy_ci: tuple[float, float]
    auc: float
    auc_ci: tuple[float, float]
    rows: int
    groups: int
    top_features: tuple[str, ...] = ()


def out_of_fold(
    model: object, x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = FOLDS
) -> np.ndarray:
    """Each row's predicted probability of label 1 from a model that never saw its piece."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedGroupKFold

    proba = np.full(len(y), np.nan)
    n_folds = min(folds, len(np.unique(groups)))
    # Stratified as well as grouped: where a piece has one row (the controls), plain GroupKFold
    # leaves folds unbalanced, and a model fitted on the other folds leans to the label the test
    # fold lacks, which pushes a null result below 50%.
    cv = StratifiedGroupKFold(n_splits=n_folds)
    for train, test in cv.split(x, y, groups):
        if len(np.unique(y[train])) < 2:  # a tiny set: nothing to learn but the base rate
            proba[test] = float(np.mean(y[train]))
            continue
        fitted = clone(model).fit(x[train], y[train])
        proba[test] = fitted.predict_proba(x[test])[:, 1]
    return proba


def _accuracy(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p >= 0.5) == (y == 1)))


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (ties count half): sklearn's roc_auc_score checks
    its input for ~30 ms a call, too slow for a thousand bootstrap resamples."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return math.nan
    ranks = rankdata(p)
    return float((ranks[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], float],
    *,
    n: int = BOOTSTRAP,
    seed: int = 0,
) -> tuple[float, float]:
    """95% percentile interval of `stat` over resamples of whole pieces (groups)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in ids}
    values = []
    for _ in range(n):
        pick = np.concatenate([members[g] for g in rng.choice(ids, size=len(ids))])
        value = stat(y[pick], p[pick])
        if not math.isnan(value):
            values.append(value)
    if not values:
        return math.nan, math.nan
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def _top_features(model: object, x: np.ndarray, y: np.ndarray, names: list[str]) -> tuple[str, ...]:
    """The three features the model, fitted on every row, leans on most."""
    from sklearn.base import clone

    fitted = clone(model).fit(x, y)
    last = fitted.steps[-1][1]
    weights = (
        np.abs(last.coef_[0]) if hasattr(last, "coef_") else np.asarray(last.feature_importances_)
    )
    return tuple(names[i] for i in np.argsort(-weights)[:3])


def classify(
    x: np.ndarray, y: np.ndarray, groups: np.ndarray, names: list[str], *, seed: int = 0
) -> dict[str, TestResult]:
    """Both classifiers on one feature matrix: out-of-fold accuracy and AUC, bootstrapped."""
    results = {}
    for name, model in _classifiers(seed).items():
        p = out_of_fold(model, x, y, groups)
        results[name] = TestResult(
            classifier=name,
            accuracy=_accuracy(y, p),
            accuracy_ci=bootstrap_ci(y, p, groups, _accuracy, seed=seed),
            auc=_auc(y, p),
            auc_ci=bootstrap_ci(y, p, groups, _auc, seed=seed),
            rows=len(y),
            groups=len(np.unique(groups)),
            top_features=_top_features(model, x, y, names),
        )
    return results


def better(results: Mapping[str, TestResult]) -> TestResult:
    """The classifier that tells the classes apart best (accuracy, then AUC): the test's verdict
    is the strongest of the two."""
    return max(results.values(), key=lambda r: (r.accuracy, r.auc))


def _each_classifier(rows: Sequence[Row], seed: int) -> dict[str, dict[str, TestResult]]:
    """Feature set -> classifier -> its result on these rows."""
    y = np.array([r.label for r in rows])
    groups = np.array([r.group for r in rows])
    if len(np.unique(groups)) < 2 * FOLDS or len(np.unique(y)) < 2:
        raise ValueError(f"a two-sample test needs both labels and {2 * FOLDS}+ pieces")
    out = {}
    for fs in FEATURE_SETS:
        x, names = feature_matrix(rows, fs)
        out[fs] = classify(x, y, groups, names, seed=seed)
    return out


def two_sample_test(rows: Sequence[Row], *, seed: int = 0) -> dict[str, TestResult]:
    """Feature set -> the better classifier's result on these rows."""
    return {fs: better(results) for fs, results in _each_classifier(rows, seed).items()}


def _mean_result(results: Sequence[TestResult]) -> TestResult:
    """One classifier over several random splits: the mean accuracy and AUC, and the mean of the
    splits' intervals (each split's interval reflects the same 100 seeds, so averaging the
    bounds keeps their width while the split's own luck averages out)."""

    def mean(values: Sequence[float]) -> float:
        return float(np.nanmean(values))

    first = results[0]
    return TestResult(
        classifier=first.classifier,
        accuracy=mean([r.accuracy for r in results]),
        accuracy_ci=(
            mean([r.accuracy_ci[0] for r in results]),
            mean([r.accuracy_ci[1] for r in results]),
        ),
        auc=mean([r.auc for r in results]),
        auc_ci=(mean([r.auc_ci[0] for r in results]), mean([r.auc_ci[1] for r in results])),
        rows=first.rows,
        groups=first.groups,
        top_features=first.top_features,
    )


def control_test(
    seeds: Sequence[Piece],
    real: Sequence[Piece],
    bar_starts: Sequence[float],
    *,
    shuffled: bool,
    seed: int = 0,
    repeats: int = CONTROL_REPEATS,
) -> dict[str, TestResult]:
    """A control (`control_rows`) over `repeats` random splits of the seeds into two halves:
    feature set -> the better classifier's mean result. One split of 100 seeds strays by about
    ten points either way by luck alone; the mean over splits does not."""
    runs = [
        _each_classifier(
            control_rows(seeds, real, bar_starts, shuffled=shuffled, seed=seed + k), seed
        )
        for k in range(repeats)
    ]
    return {
        fs: better({name: _mean_result([run[fs][name] for run in runs]) for name in runs[0][fs]})
        for fs in FEATURE_SETS
    }


def paired_rows(
    seeds: Sequence[Piece],
    real: Sequence[Piece],
    made: Sequence[Piece],
    bar_starts: Sequence[float],
) -> list[Row]:
    """Per case, the real continuation (label 0) and the made one (label 1), grouped by case."""
    rows = []
    for i, (s, r, m, b) in enumerate(zip(seeds, real, made, bar_starts, strict=True)):
        rows += [Row(s, r, b, 0, i), Row(s, m, b, 1, i)]
    return rows


def control_rows(
    seeds: Sequence[Piece],
    real: Sequence[Piece],
    bar_starts: Sequence[float],
    *,
    shuffled: bool,
    seed: int = 0,
) -> list[Row]:
    """The cases split at random into two halves, one row per case: label 0, the real
    continuation; label 1, the real continuation too (`shuffled` False), or another label-1
    case's real continuation paired with this seed (`shuffled` True). No continuation appears
    twice, so a classifier cannot recognise one piece under both labels."""
    n = len(seeds)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    ones = order[n // 2 :]
    label = np.zeros(n, dtype=int)
    label[ones] = 1
    partner = {int(i): int(i) for i in range(n)}
    if shuffled and len(ones) > 1:
        # a derangement of the label-1 half: each seed gets the next one's continuation
        for a, b in zip(ones, np.roll(ones, -1), strict=True):
            partner[int(a)] = int(b)
    return [
        Row(seeds[i], real[partner[i]], bar_starts[partner[i]], int(label[i]), i) for i in range(n)
    ]
