"""Local executor: every stage and cell is a submitit LocalExecutor job (its own process and log file).

Jobs end with this process (killed, or interrupted with Ctrl-C): none keeps computing as an orphan.
At most `max_parallel` jobs run at once (submitit's local executor would start them all together, which
thrashes a small machine). Jobs of one stage level finish before the next level or the cells start.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import submitit

from bench import layout
from bench.executors.base import Executor
from bench.jobs import PARENT_ENV, CellJob, StageJob
from bench.options import ExecutorOptions, RunOptions

LOG = logging.getLogger("bench.executors")


@dataclass(frozen=True)
class LocalOptions(ExecutorOptions):
    """conf/executor/local.yaml's options (its comments say what each does)."""

    conf_name: ClassVar[str] = "local"
    max_parallel: int
    timeout_min: int
    gpus_per_node: int
    jobs_dir: str
    poll_s: float


def _stop(job: Any) -> None:
    """SIGTERM to a local job's controller (its pid is the job id), which passes it on to the job's process;
    the job process also ends by itself once this process has gone (bench.jobs.end_with_parent)."""
    with contextlib.suppress(ValueError, ProcessLookupError, PermissionError):
        os.kill(int(job.job_id), signal.SIGTERM)


class LocalExecutor(Executor):
    """Local executor: every stage and cell a submitit local job, at most `max_parallel` at once."""

    Options = LocalOptions
    options: LocalOptions

    def __init__(self, options: LocalOptions | dict[str, Any] | None = None,
                 run_options: RunOptions | dict[str, Any] | None = None):
        super().__init__(options, run_options)
        self.folder = layout.local_jobs_dir(self.options.jobs_dir)
        self.executor: Any = None  # submitit's, made when work starts (a dry run creates no job folder)

    def _start_submitit(self) -> None:
        if self.executor is None:
            self.executor = submitit.AutoExecutor(folder=self.folder, cluster="local")
            self.executor.update_parameters(timeout_min=self.options.timeout_min,
                                            gpus_per_node=self.options.gpus_per_node)

    def _run_window(self, jobs: dict[str, Any]) -> dict[str, Any]:
        """Run callables keyed by name, at most max_parallel at once; returns name -> result or 'failed'."""
        limit = max(1, self.options.max_parallel)
        poll = self.options.poll_s
        waiting, running, outcomes = list(jobs.items()), {}, {}
        try:
            self._loop(waiting, running, outcomes, limit, poll)
        finally:  # interrupted (Ctrl-C) or failed: no job outlives this run
            for name, job in running.items():
                if not job.done():
                    LOG.warning("stopping local job %s (%s)", job.job_id, name)
                    _stop(job)
        return outcomes

    def _submit(self, function: Any) -> Any:
        """Start a job deaf to SIGINT: a Ctrl-C reaches this process alone, which stops the jobs itself
        (submitit's job controller would print a traceback); the jobs end with this process in any case.

        SIGINT is blocked in this thread while the job starts, and the job's processes inherit the blocked mask.
        Ignoring it instead (SIG_IGN) would also make this process drop a SIGINT that arrives meanwhile, and a
        submission (pickling the job, starting its controller) lasts long enough on a loaded machine for an
        interrupt to land there and go unheeded; a blocked one stays pending and is acted on once unblocked
        (or at once by another thread's handler, which wakes the main thread)."""
        if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
            return self.executor.submit(function)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            return self.executor.submit(function)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def _loop(self, waiting: list, running: dict, outcomes: dict, limit: int, poll: float) -> None:
        while waiting or running:
            while waiting and len(running) < limit:
                name, function = waiting.pop(0)
                running[name] = self._submit(function)
                LOG.info("submitted local job %s for %s (log: %s)", running[name].job_id, name,
                         running[name].paths.stdout)
            for name, job in list(running.items()):
                if job.done():
                    try:
                        outcomes[name] = job.result()
                    except Exception as error:  # the job's own failed record or failed.json says why
                        LOG.error("job %s (%s) failed; log: %s\n%s", job.job_id, name, job.paths.stderr, error)
                        outcomes[name] = "failed"
                    del running[name]
            if running:
                time.sleep(poll)

    def run(self, plan_path: Path, stage_levels: list[list[str]], cells: list[str]) -> dict[str, Any]:
        # inherited by the jobs: they end when this process does
        os.environ[PARENT_ENV] = f"{socket.gethostname()}:{os.getpid()}"
        self._start_submitit()
        outcomes: dict[str, Any] = {}
        for level in stage_levels:
            outcomes.update(self._run_window({key: StageJob(str(plan_path), key) for key in level}))
        outcomes.update(self._run_window({key: CellJob(str(plan_path), key) for key in cells}))
        return outcomes
