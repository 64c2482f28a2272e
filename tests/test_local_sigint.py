"""A Ctrl-C that lands while the local executor starts a job is acted on, and the job's processes do not see it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bench.executors.local import LocalExecutor

CHILD = "import signal; print(int(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])))"


class InterruptedSubmission:
    """A submitit executor whose submission starts a child process and receives a SIGINT meanwhile."""

    def __init__(self):
        self.child_blocks_sigint = None

    def submit(self, function):
        child = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
        self.child_blocks_sigint = child.stdout.strip() == "1"
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return "job"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_sigint_during_a_submission_is_acted_on_and_the_job_is_deaf_to_it(tmp_path):
    executor = LocalExecutor({"jobs_dir": str(tmp_path)})
    executor.executor = fake = InterruptedSubmission()
    # Python's own SIGINT handler, installed again: in a fresh clone's full suite (and only there) a SIGINT sent
    # here was twice never acted on; with this it was acted on in 4 of 4 such runs. Cause unknown: at this point the
    # C-level handler was Python's own (checked with sigaction) and the Python-level one default_int_handler.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            executor._submit(lambda: None)
            time.sleep(1.0)  # a pending signal is acted on at once; this only bounds the wait for a dropped one
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fake.child_blocks_sigint
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the mask is restored
