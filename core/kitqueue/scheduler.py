"""RQ's scheduler (delayed jobs, retries after an interval), moving each due job exactly once.

RQ moves the due jobs of a queue from its scheduled registry to the queue in one MULTI/EXEC.
The workers' connections retry a command whose reply did not come within the socket timeout
(they follow a failover that way), and redis-py then sends the whole transaction again: when
the master stalled past the timeout but not past Sentinel's down-after (a slow disk, a paused
VM), both copies run, the job's id is pushed twice, and two workers run the job. Here the
transaction WATCHes the registry: redis-py never sends a watching transaction again (it raises
WatchError), and the next pass finds the jobs the first one moved gone from the registry.
"""

from __future__ import annotations

import logging

from redis.exceptions import WatchError
from rq.job import Job
from rq.queue import Queue
from rq.scheduler import RQScheduler
from rq.utils import current_timestamp

log = logging.getLogger(__name__)


class KitScheduler(RQScheduler):
    def enqueue_scheduled_jobs(self) -> None:
        """RQ's (3.0), with each queue's move in a transaction that is never sent twice."""
        self._status = self.Status.WORKING
        if not self._scheduled_job_registries and self._acquired_locks:
            self.prepare_registries()
        for registry in self._scheduled_job_registries:
            job_ids = registry.get_jobs_to_schedule(current_timestamp())
            if not job_ids:
                continue
            queue = Queue(registry.name, connection=self.connection, serializer=self.serializer)
            jobs = Job.fetch_many(job_ids, connection=self.connection, serializer=self.serializer)
            with self.connection.pipeline() as pipeline:
                try:
                    pipeline.watch(registry.key)
                    pipeline.multi()
                    for job_id, job in zip(job_ids, jobs, strict=True):
                        if job is None:
                            registry.remove(job_id, pipeline=pipeline)
                        elif job.has_rate_limit:
                            registry.remove(job.id, pipeline=pipeline)
                            queue._enqueue_rate_limited_job(
                                job, pipeline=pipeline, at_front=job.should_enqueue_at_front()
                            )
                        else:
                            queue._enqueue_job(job, pipeline=pipeline, at_front=job.should_enqueue_at_front())
                            registry.remove(job.id, pipeline=pipeline)
                    pipeline.execute()
                except WatchError as error:
                    # The registry changed meanwhile (a job scheduled), or the reply was lost:
                    # the next pass (a second from now) reads the registry again.
                    log.info("scheduled jobs of %s not moved this pass: %s", registry.name, error)
        self._status = self.Status.STARTED
