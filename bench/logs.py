"""Logging set-up for the command-line tools and the jobs (one format; a job's own log file remembered)."""

from __future__ import annotations

import logging
import os

from bench import layout

JOB_LOG_ENV = "BENCH_JOB_LOG"


def configure_logging(level: str = "INFO") -> None:
    _note_job_log()
    logging.basicConfig(level=getattr(logging, str(level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", force=True)


def job_log() -> str | None:
    """The log file of the submitit job this process is (None outside one): failed records point at it."""
    return os.environ.get(JOB_LOG_ENV)


def _note_job_log() -> None:
    """Inside a submitit job, remember its log file so that failed records can point at it."""
    try:
        import submitit

        environment = submitit.JobEnvironment()
        # stderr: where logging and tracebacks go (stdout holds submitit's own few lines)
        log = str(environment.paths.stderr)
        os.environ[JOB_LOG_ENV] = log.replace(layout.JOB_ID_PLACEHOLDER, str(environment.job_id))
    except RuntimeError:  # not inside a submitit job
        pass
