"""The worker cluster of ``manage.py qcluster``: django-q2's, with no lock shared between workers.

django-q2's workers take their tasks from one multiprocessing queue that a pusher process fills,
and hand results to a monitor process through another. A queue's readers share a lock, held by
whichever reader is blocked in ``get()``: when the idle worker holding it is killed (SIGKILL, the
OOM killer), the lock is never released, no worker takes a task again and SIGTERM no longer stops
the cluster (measured on PostgreSQL + Redis: 10 stalls in 10 kills of the holder, 1 in 10 random
idle kills). Its sentinel cannot repair that from outside: the other workers wait on the dead
lock. Replacing the queue and every process on a death could, but the tasks in the old queue
would be lost, and the monitor's reader lock has the same flaw. So here no lock is shared that a
dead worker could leave taken:

- Each worker takes its tasks from the broker itself (``BrokerLink.get``): ``BLMOVE`` on Redis
  (``project.redis_broker``), the leasing UPDATE on the ORM broker (``project.orm_broker``), both
  safe between processes on their own. It records its results itself, as the monitor did. Its loop
  is still django-q2's (``django_q.worker.worker``): timeouts, signals and recycling are unchanged.
  With ``Q_BULK`` > 1 a worker leases that many tasks at a time for itself.
- Stopping is a flag in shared memory that every worker reads, not "STOP" pills in a queue; a
  worker whose sentinel is gone stops too.
- The one lock left is each worker's django-q2 timer, shared with the sentinel alone, which waits
  for it a bounded time: a worker that died holding it cannot stall the sentinel.
- A worker hands graph runs and ``async def`` executions to its process's event loop
  (``executions.worker_loop``) and reads the broker again only while that loop has room
  (``RUNS_CONCURRENCY_PER_WORKER``, ``EXECUTIONS_CONCURRENCY_PER_WORKER``). When it stops
  (the flag, or recycled) it lets the jobs on its loop finish for ``WORKER_GRACE_SECONDS``, then
  gives the rest back to the queue before it exits; the sentinel waits for that.

The sentinel keeps django-q2's supervision (replacing dead, timed-out and recycled workers) and
adds two duties:

- When a worker dies, a short-lived process (the sentinel never waits on the database) puts back
  in the queue a message Redis handed the worker as it died, and reaps the jobs it held
  (``executions.recovery.worker_jobs_reap``) at once rather than after the heartbeat timeout. The
  sentinel is the worker's parent: it knows that pid died, which no other process can know for
  sure (pids are reused; containers sharing a hostname have pid namespaces of their own). The
  heartbeat timeout still covers a whole cluster or machine lost.
- A worker idle in its read of the broker for longer than ``EXECUTIONS_WORKER_STALL_TIMEOUT`` is
  wedged (a read returns every second or so; one on a half-open connection may never): it is
  killed and replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from multiprocessing.process import BaseProcess, current_process
from multiprocessing.sharedctypes import Synchronized
from typing import Any, Protocol, cast

from django import db
from django.conf import settings
from django.utils import timezone
from django_q import cluster as django_q_cluster
from django_q.brokers import Broker
from django_q.conf import Conf, logger, psutil
from django_q.humanhash import humanize
from django_q.monitor import save_cached, save_task
from django_q.scheduler import scheduler
from django_q.signals import post_execute
from django_q.signing import BadSignature, SignedPackage
from django_q.status import Stat
from django_q.utils import get_func_repr
from django_q.worker import worker

from executions import worker_loop
from executions.recovery import worker_jobs_reap

# django-q2's timer values: seconds left of the task's timeout while busy, and these.
IDLE, TIMED_OUT, RECYCLED = -1, 0, -2
# How long the sentinel waits for a worker's timer lock before it looks at the worker again.
TIMER_LOCK_WAIT = 1.0
# A worker stopped for its timeout (SIGTERM) that is still alive this long after is killed.
TERMINATE_GRACE = 5.0
# How long a reaper process keeps trying when the database is unavailable; past that the
# heartbeat timeout's sweep finds the jobs anyway.
REAP_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
# How long a full worker waits for room on its event loop before it looks at the stop flag again.
ROOM_WAIT = 0.5


def _mp() -> Any:  # the fork context where there is one, as django-q2's
    return django_q_cluster.get_mp_context()


class WorkerProcess(Protocol):
    """A worker's Process, with what the sentinel keeps on it (django-q2 keeps ``timer`` so)."""

    pid: int | None
    name: str
    daemon: bool
    exitcode: int | None
    timer: Synchronized  # django-q2's: seconds left of its task, or IDLE, TIMED_OUT, RECYCLED
    reading: Any  # RawValue: when its current wait for a task began, 0 while it holds one
    taker: str  # the name of its list of taken messages (project.redis_broker)

    def start(self) -> None: ...
    def is_alive(self) -> bool: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class BrokerLink:
    """A worker's own way to the broker, in place of django-q2's two shared queues.

    ``get`` takes the worker's next task from the broker (or ``"STOP"``), ``put`` keeps a finished
    one, recorded as django-q2's monitor would at the next ``get`` or when the worker ends, so the
    recording happens outside the timer lock that django-q2's worker holds around ``put``.
    """

    def __init__(self, broker: Broker, *, stop: Any, reading: Any, taker: str) -> None:
        self._broker = broker
        self._taker = taker  # the name of the worker's list of taken messages (project.redis_broker)
        self._stop = stop  # a shared flag without a lock (RawValue)
        # When the worker's current wait for a task began, 0 while it holds one (RawValue): a task
        # without a timeout leaves django-q2's timer at "idle", so the timer cannot tell.
        self._reading = reading
        self._parent = os.getpid()  # built in the sentinel, used in its child
        self._leased: list[dict] = []
        self._finished: list[dict] = []
        # The process's event loop (set in the worker): the broker is read only while it has room.
        self.host: worker_loop.WorkerLoop | None = None

    def get(self) -> dict | str:
        if self._taker and hasattr(self._broker, "take_as"):
            self._broker.take_as(self._taker)  # in the worker: its copy of the sentinel's broker
            self._taker = ""
        self._reading.value = time.monotonic()
        self.flush()
        while not self._leased:
            # A worker whose sentinel is gone has no one to replace it or to enforce timeouts.
            if self._stop.value or os.getppid() != self._parent:
                self._reading.value = 0.0  # not reading: draining its jobs is not a stall
                return "STOP"
            self._reading.value = time.monotonic()
            if self.host is not None and not self.host.wait_for_room(ROOM_WAIT):
                continue  # full: the queue is left to the other workers meanwhile
            try:
                leased = self._broker.dequeue()
            except Exception:  # noqa: BLE001  a broker or database down: read again, as the pusher did
                logger.exception("Failed to pull task from broker")
                db.connections.close_all()  # the ORM broker's query may have broken the connection
                time.sleep(1.0)
                continue
            self._leased.extend(self._unpack(leased or ()))
        self._reading.value = 0.0
        return self._leased.pop(0)

    def _unpack(self, leased: Any) -> Iterator[dict]:
        for ack_id, payload in leased:
            try:
                task = SignedPackage.loads(payload)
            except (TypeError, BadSignature):
                logger.exception("Failed to push task to queue")
                self._broker.fail(ack_id)
                continue
            task["cluster"] = Conf.CLUSTER_NAME
            task["ack_id"] = ack_id
            yield task

    def put(self, task: dict) -> None:
        self._finished.append(task)

    def flush(self) -> None:
        while self._finished:
            task = self._finished.pop(0)
            try:
                self._record(task)
            except Exception:  # noqa: BLE001  a lost acknowledgement only redelivers an id the claim skips
                logger.exception("Could not record the result of task %s", task.get("name"))

    def _record(self, task: dict) -> None:
        """What django-q2's monitor does with a finished task."""
        if task.get("cached", False):
            save_cached(task, self._broker)
        else:
            save_task(task, self._broker)
        ack_id = task.pop("ack_id", False)
        if ack_id and (task["success"] or task.get("ack_failure", False)):
            self._broker.acknowledge(ack_id)
        post_execute.send(sender="django_q", task=task)
        if task["success"]:
            logger.info("Processed '%s' (%s)", get_func_repr(task["func"]), task["name"])
        else:
            logger.error("Failed '%s' (%s) - %s", get_func_repr(task["func"]), task["name"], task["result"])


def _work(link: BrokerLink, timer: Synchronized, timeout: int | None) -> None:
    """A worker process: django-q2's loop on its own link to the broker, and the process's event
    loop for the jobs its tasks hand over (``executions.worker_loop``), drained at the end."""
    capacity = {
        "runs": int(settings.RUNS_CONCURRENCY_PER_WORKER),
        "executions": int(settings.EXECUTIONS_CONCURRENCY_PER_WORKER),
    }
    host = None
    if max(capacity.values()) > 1:
        host = worker_loop.start(capacity, block_warn=float(settings.WORKER_LOOP_BLOCK_WARN_SECONDS))
        link.host = host
    try:
        worker(link, link, timer, timeout)
    finally:
        link.flush()  # the last task's result, when the worker recycles or stops
        if host is not None:
            grace = float(settings.WORKER_GRACE_SECONDS)
            if host.held():
                logger.info("worker %s stopping: %d jobs in flight, up to %.0f s to finish",
                            os.getpid(), host.held(), grace)
            host.drain(grace)
            worker_loop.forget()


def worker_name(pid: int) -> str:
    """The ``worker`` a process writes into the rows it claims (``executions.runtime``, ``runs.tasks``)."""
    return f"{socket.gethostname()}:{pid}"


def _exit_cause(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _reap_jobs_of(broker: Broker, pid: int, taker: str, claimed_before: datetime, cause: str) -> None:
    """A short-lived process: the message a dead worker was being handed put back in the queue
    (``project.redis_broker``), and the jobs it held requeued or ended."""
    requeue_taken = getattr(broker, "requeue_taken", None)
    for delay in (*REAP_RETRY_DELAYS, None):
        try:
            if requeue_taken is not None and requeue_taken(taker):
                logger.warning("put back the message worker %s was handed as it died", pid)
            worker_jobs_reap(worker=worker_name(pid), claimed_before=claimed_before, cause=cause)
            break
        except Exception:  # noqa: BLE001  the database restarting: try again, then leave it to the sweep
            logger.warning("could not reap the jobs of worker %s yet", pid, exc_info=True)
            db.connections.close_all()
            if delay is None:
                break
            time.sleep(delay)
    db.connections.close_all()


@contextlib.contextmanager
def _timer_locked(process: WorkerProcess) -> Iterator[Synchronized | None]:
    """The worker's timer, locked; None when the lock stays taken (by the worker, or by a worker
    that died holding it: the caller finds that out from its exit)."""
    lock = process.timer.get_lock()
    if not lock.acquire(timeout=TIMER_LOCK_WAIT):
        yield None
        return
    try:
        yield process.timer
    finally:
        lock.release()


class Sentinel(django_q_cluster.Sentinel):
    """django-q2's sentinel over workers that share no lock: no pusher, no monitor (see above)."""

    def __init__(self, stop_event, start_event, cluster_id, broker=None, timeout=None, start: bool = True) -> None:
        super().__init__(stop_event, start_event, cluster_id, broker=broker, timeout=timeout, start=False)
        self.stopping = _mp().RawValue(ctypes.c_bool, False)
        # A read of the broker returns every second or so (Redis BLPOP, or the ORM poll at most).
        self.stall_timeout = max(float(settings.EXECUTIONS_WORKER_STALL_TIMEOUT), 3 * max(float(Conf.POLL), 1.0))
        self.reapers: list[BaseProcess] = []
        self.terminated: list[tuple[WorkerProcess, float]] = []  # stopped for their timeout, not yet gone
        if start:
            self.start()

    # --- processes --------------------------------------------------------------------------

    def spawn_cluster(self) -> None:
        self.pool: list[WorkerProcess] = []
        Stat(self).save()
        db.connections.close_all()  # a forked child must not share the sentinel's connections
        for _ in range(self.pool_size):
            self.spawn_worker()
        if psutil and Conf.CPU_AFFINITY:
            django_q_cluster.set_cpu_affinity(Conf.CPU_AFFINITY, [w.pid for w in self.pool])

    def spawn_worker(self) -> None:
        timer = _mp().Value("f", IDLE)
        reading = _mp().RawValue(ctypes.c_double, time.monotonic())  # from its start to its first read
        taker = f"{socket.gethostname()}:{uuid.uuid4().hex}"
        link = BrokerLink(self.broker, stop=self.stopping, reading=reading, taker=taker)
        process = cast(WorkerProcess, _mp().Process(
            target=_work, args=(link, timer, self.timeout), name=f"Process-{uuid.uuid4().hex}"
        ))
        process.daemon = Conf.DAEMONIZE_WORKERS
        process.timer, process.reading, process.taker = timer, reading, taker
        self.pool.append(process)
        process.start()

    def status(self) -> str:
        if not self.start_event.is_set() and not self.stop_event.is_set():
            return Conf.STARTING
        if not self.stop_event.is_set():
            # The timer read without its lock: a status must never wait on a worker.
            busy = any(process.timer.get_obj().value > 0 for process in self.pool)
            return Conf.WORKING if busy else Conf.IDLE
        return Conf.STOPPING if self.pool else Conf.STOPPED

    # --- the guard ----------------------------------------------------------------------------

    def guard(self) -> None:
        name = f"{humanize(self.cluster_id.hex)} [{self.queue_name()}]"
        logger.info("%s guarding cluster %s", current_process().name, name)
        self.start_event.set()
        Stat(self).save()
        logger.info("Q Cluster %s running.", name)
        counter = 0.0
        cycle = Conf.GUARD_CYCLE
        while True:
            self.check_workers(cycle, replace=True)
            counter += cycle
            if counter >= 30 and Conf.SCHEDULER:
                counter = 0
                scheduler(broker=self.broker)
            Stat(self).save()
            if self.stop_event.wait(cycle):
                break
            if os.getppid() != self.parent_pid:
                # The cluster's main process is gone (killed): nobody would ever stop this one.
                logger.critical("the cluster's main process %s is gone: stopping", self.parent_pid)
                break
        self.stop()

    def check_workers(self, cycle: float, *, replace: bool) -> None:
        """One look at every worker: the dead ones replaced (unless stopping) and their jobs
        reaped, timeouts counted down and enforced, wedged idle ones killed."""
        for process in list(self.pool):
            if not process.is_alive():
                self.pool.remove(process)
                self._after_death(process)
                if replace:
                    self._replace(process, "after death")
                continue
            with _timer_locked(process) as timer:
                if timer is None:
                    continue
                if timer.value > 0:
                    timer.value = max(0.0, timer.value - cycle)
                timed_out, idle = timer.value == TIMED_OUT, timer.value == IDLE
            if timed_out:
                self.pool.remove(process)
                process.terminate()
                self.terminated.append((process, time.monotonic()))
                if replace:
                    self._replace(process, "after timeout")
            elif idle and 0 < process.reading.value < time.monotonic() - self.stall_timeout:
                logger.critical(
                    "worker %s, idle, has not come back from its read of the broker for over %.0fs: killed",
                    process.name, self.stall_timeout,
                )
                process.kill()  # replaced at the next look, like any dead worker
        for process, since in list(self.terminated):
            if not process.is_alive():
                self.terminated.remove((process, since))
                self._after_death(process)
            elif time.monotonic() - since > TERMINATE_GRACE:
                process.kill()
        self.reapers = [reaper for reaper in self.reapers if reaper.is_alive()]

    def _replace(self, process: WorkerProcess, why: str) -> None:
        db.connections.close_all()
        self.spawn_worker()
        self.reincarnations += 1
        if process.timer.get_obj().value == RECYCLED:
            logger.info("recycled worker %s", process.name)
        else:
            logger.critical("reincarnated worker %s %s", process.name, why)

    def _after_death(self, process: WorkerProcess) -> None:
        """The jobs the dead worker held, reaped by a process of their own."""
        if process.timer.get_obj().value == RECYCLED:
            return  # it ended its last task and left
        cause = _exit_cause(process.exitcode)
        if process.timer.get_obj().value == TIMED_OUT:
            cause = f"{cause} after its task's timeout"
        db.connections.close_all()
        reaper = _mp().Process(
            target=_reap_jobs_of, args=(self.broker, process.pid, process.taker, timezone.now(), cause),
            name=f"Reaper-{process.pid}", daemon=True,
        )
        reaper.start()
        self.reapers.append(reaper)

    def stop(self) -> None:
        Stat(self).save()
        logger.info("%s stopping cluster processes", current_process().name)
        # Every worker finishes the task in hand, then finds the flag at its next read.
        self.stopping.value = True
        while self.pool or self.terminated:
            self.check_workers(0.1, replace=False)
            time.sleep(0.1)
            Stat(self).save()
        deadline = time.monotonic() + 30
        while self.reapers and time.monotonic() < deadline:
            self.reapers = [reaper for reaper in self.reapers if reaper.is_alive()]
            time.sleep(0.1)
        Stat(self).save()


class Cluster(django_q_cluster.Cluster):
    """django-q2's cluster with the sentinel above."""

    def start(self) -> int:
        self.stop_event = _mp().Event()
        self.start_event = _mp().Event()
        self.sentinel = _mp().Process(
            target=Sentinel,
            name=f"Process-{uuid.uuid4().hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        logger.info("Q Cluster %s starting.", self.name)
        # Polled rather than waited on, as django-q2 does: a signal received while blocked in
        # wait() would deadlock against the sentinel; the handler also sets start_event to None.
        while self.start_event and not self.start_event.is_set():
            if not self.sentinel.is_alive():
                if self.sentinel.exitcode == 0:
                    break  # stopped by SIGTERM/SIGINT while starting
                raise RuntimeError(f"Q Cluster {self.name} failed to start: sentinel exited with code "
                                   f"{self.sentinel.exitcode}")
            time.sleep(0.1)
        return self.pid
