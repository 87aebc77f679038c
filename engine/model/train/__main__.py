"""`python -m engine.model.train`: train a model (`motif train`, engine.cli.training)."""

from engine.cli.training import train_main

raise SystemExit(train_main())
