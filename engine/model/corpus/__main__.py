"""`python -m engine.model.corpus`: build the corpus cache (engine.model.corpus.build.main)."""

from engine.model.corpus.build import main

raise SystemExit(main())
