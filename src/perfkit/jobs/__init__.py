"""Long jobs off the request path: a Celery queue on perfkit's own Redis, run by a worker process.

A chapter summary takes seconds to minutes of model time. Run inline, it holds the server's
engine while short chat requests wait; queued, the server (or any client) only records the job and
pushes a message, and a separate worker process runs it. On one machine the worker and the server
still share the cores, so the queue moves the wait out of the request path, not the work.

`tasks` is the Celery app and the one task (`perfkit.run_job`); `client.JobQueue` submits and
reads jobs; `worker.celery_worker` starts a worker as perfkit's child. Delivery is at least once
(late acks: a job is acknowledged after it ran, so a worker that dies mid-job gives it back), and
each job's state lives in a Redis hash keyed by its id, so a job submitted twice is queued once
and a job delivered twice completes once.
"""
