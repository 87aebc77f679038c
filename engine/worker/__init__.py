"""The Celery side: the app, dispatch, tasks, a worker's life, the pipeline, the reaper, retraining."""
