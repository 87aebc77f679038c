"""Motif's engine: music, model, SQL records, jobs and Celery tasks.

The SQL (`engine.records`, `engine.db`) and job-submission (`engine.jobs`) modules import
without torch so the Discord bot can use them; torch lives behind `engine.model` and friends.
"""
