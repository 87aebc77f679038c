"""`python -m engine.model.train`: train a model (engine.model.train.train.main)."""

from engine.model.train.train import main

raise SystemExit(main())
