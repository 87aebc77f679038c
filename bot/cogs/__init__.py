"""One cog per feature: composing, admin commands, information."""
