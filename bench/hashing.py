"""Content hashes of files, cached by (path, size, mtime) in a small JSON file so large inputs are read once.

Used for the input files in stage and cell keys (classifier weights, RobustBench checkpoints, dataset files)
and for checking the official datasets' published checksums. The cache lives in `$BENCH_HASH_CACHE`, else
`~/.cache/bench/file_hashes.json`; a cache that cannot be read or written only costs re-hashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from defences.atomic import unique_temp

CACHE_ENV = "BENCH_HASH_CACHE"
_CHUNK = 1 << 20
_LOCK = threading.Lock()


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bench" / "file_hashes.json")


def _read_cache(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict[str, str]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = unique_temp(path)
        try:
            tmp.write_text(json.dumps(data, sort_keys=True))
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:
        pass


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's content; recomputed only when its size or modification time changed."""
    path = Path(path).resolve()
    stat = path.stat()
    entry = f"{algorithm}:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    location = cache_path()
    with _LOCK:
        cached = _read_cache(location).get(entry)
    if cached:
        return cached
    digest = hashlib.new(algorithm)
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    value = digest.hexdigest()
    with _LOCK:
        data = _read_cache(location)
        stale = [k for k in data if k.startswith(f"{algorithm}:{path}:")]
        for key in stale:
            del data[key]
        data[entry] = value
        _write_cache(location, data)
    return value
