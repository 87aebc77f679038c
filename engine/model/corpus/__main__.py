"""`python -m engine.model.corpus`: build the corpus cache (`motif corpus build`,
engine.cli.corpus)."""

from engine.cli.corpus import corpus_main

raise SystemExit(corpus_main())
