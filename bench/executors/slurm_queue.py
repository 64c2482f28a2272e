"""Asking SLURM how its jobs are: squeue for jobs still queued or running, sacct for the ones that ended.

Without a cluster (no squeue or sacct here, or accounting off) every state is UNKNOWN, which callers treat as
ended: what the job left on disk then decides.
"""

from __future__ import annotations

import re
import shutil
import subprocess

RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING"}
QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD", "STOPPED"}
ACTIVE_STATES = RUNNING_STATES | QUEUED_STATES
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")


def _run(command: list[str]) -> str | None:
    """stdout of a SLURM command, or None when the tool is missing or fails (no cluster here)."""
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _expand_job_id(job_id: str) -> list[str]:
    """'12_[0-3%2]' -> ['12_0', ..., '12_3']; a plain id is itself."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    ids = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        ids.extend(f"{array}_{i}" for i in range(int(lo), int(hi or lo) + 1))
    return ids


def parse_state_table(text: str) -> dict[str, str]:
    """'JobID|State' lines (squeue -r or sacct -X -P output) -> task id -> state, array ranges expanded."""
    states: dict[str, str] = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if not sep:
            continue
        for task in _expand_job_id(job_id.strip()):
            # 'CANCELLED by 0' -> 'CANCELLED'; an explicit task line overrides its array's range line
            if task not in states or "[" not in job_id:
                states[task] = state.split()[0] if state.split() else "UNKNOWN"
    return states


def query_job_states(job_ids: list[str]) -> dict[str, str]:
    """State of each job or array task id: squeue for jobs still queued or running, sacct for the rest."""
    if not job_ids:
        return {}
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    queued = parse_state_table(_run(["squeue", "--noheader", "--array", "--format=%i|%T",
                                     f"--jobs={','.join(arrays)}"]) or "")
    accounted = parse_state_table(_run(["sacct", "--allocations", "--noheader", "--parsable2",
                                        "--format=JobID,State", f"--jobs={','.join(arrays)}"]) or "")
    return {job_id: queued.get(job_id) or accounted.get(job_id) or "UNKNOWN" for job_id in job_ids}


def state_word(job_state: str | None) -> str:
    if job_state in RUNNING_STATES:
        return "running"
    if job_state in QUEUED_STATES:
        return "pending"
    return "ended"
