"""A Celery application (celery_app.py, written as any Celery user writes one) against the
broker's AMQP port: starts `celery -A celery_app worker` as its own process, then calls
tasks the ways Celery users do and asks the worker for a ping and its stats (remote
control over Celery's broadcast exchange). Prints one JSON object with what came back.

usage: celery_run.py PORT     (run from this directory)
"""

import json
import os
import subprocess
import sys

PORT = sys.argv[1]
os.environ["BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{PORT}//"

from celery import chain, group  # noqa: E402

from celery_app import add, app, fail, flaky  # noqa: E402

# Every wait below is bounded (`get(timeout=...)`): a broker that never answers fails
# the run; the worker is stopped either way.
WAIT = 30

worker = subprocess.Popen(
    [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=solo",
     "-c", "1", "-n", "worker1@%h", "-l", "INFO", "-E"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
)
try:
    out = {}
    out["add"] = add.delay(2, 3).get(timeout=WAIT)
    out["countdown"] = add.apply_async((4, 5), countdown=1).get(timeout=WAIT)
    out["group"] = group(add.s(i, i) for i in range(5))().get(timeout=WAIT)
    out["chain"] = chain(add.s(1, 1), add.s(10), add.s(100))().get(timeout=WAIT)
    try:
        fail.delay("boom").get(timeout=WAIT)
        out["fail"] = "no error"
    except ValueError as e:
        out["fail"] = str(e)
    out["retries"] = flaky.delay(2).get(timeout=WAIT)
    out["ping"] = [list(reply)[0] for reply in app.control.ping(timeout=5)]
    out["stats"] = sorted(app.control.inspect(timeout=5).stats() or {})
    print(json.dumps(out))
finally:
    worker.terminate()
    try:
        log, _ = worker.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        log, _ = worker.communicate()
    sys.stderr.write(log)
