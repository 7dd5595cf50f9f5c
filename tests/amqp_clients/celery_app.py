"""A Celery application as Celery users write one (tasks that add, fail and retry),
configured by BROKER_URL; celery_run.py runs it against the broker."""

import os
from celery import Celery

app = Celery("tasks", broker=os.environ["BROKER_URL"], backend="rpc://")
app.conf.broker_connection_retry_on_startup = True


@app.task
def add(x, y):
    return x + y


@app.task
def fail(text):
    raise ValueError(text)


@app.task(bind=True, max_retries=2)
def flaky(self, attempts_before_success):
    if self.request.retries < attempts_before_success:
        raise self.retry(countdown=0.2)
    return self.request.retries
