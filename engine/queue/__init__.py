"""The job queue that senders and workers share: the Celery app (configured from the settings on
first use), the queue and task names, the embedded broker, sending by task name. No torch."""
