"""Atomic file writes: a unique temporary file beside the target, renamed into place.

A reader never sees half a file and two writers (processes, threads, hosts sharing a filesystem) never share a
temporary file. Defences save their checkpoints with it; the harness writes its records with it.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any


def unique_temp(path: Path) -> Path:
    """A temporary name beside `path`, unique across processes, threads and hosts sharing a filesystem."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a unique temporary file, fsync it, then rename over `path`: readers never see half a
    file, and two writers never share a temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_temp(path)
    try:
        with tmp.open("w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=str)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
