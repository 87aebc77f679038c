"""The plain functions behind the bot and the CLI, no torch: requests, consent, delivery, admin."""
