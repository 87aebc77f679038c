"""The training corpus: parsed from music21 (`parse`), built and cached (`build`), loaded
(`load`), and the style priors drawn from it (`style_priors`).

`python -m engine.model.corpus` builds it: `motif corpus build`, whose command line is
engine.cli.corpus."""
