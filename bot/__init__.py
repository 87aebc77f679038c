"""Motif's Discord bot: turns slash commands, buttons and MIDI attachments into engine jobs.

It never imports torch; the heavy work happens in the workers (see engine.service.requests).
"""
