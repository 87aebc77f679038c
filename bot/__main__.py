"""`python -m bot`: run the Discord bot with the settings from the environment and `.env`."""

from __future__ import annotations

from bot.main import main

raise SystemExit(main())
