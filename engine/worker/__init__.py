"""The Celery side: the worker's app, tasks, a worker's life, the pipeline, the reaper and
retraining (what senders share with workers is engine.queue)."""
