"""Motif's engine: music, model, SQL records, jobs and Celery tasks.

The SQL (`engine.store.records`, `engine.store.db`) and job-submission (`engine.service.requests`) modules import
without torch so the Discord bot can use them; torch lives behind `engine.model.network` and friends.
"""
