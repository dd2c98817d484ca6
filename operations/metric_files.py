"""The counters of every process, summed from ``PROMETHEUS_MULTIPROC_DIR`` fast enough to scrape.

``prometheus_client``'s ``MultiProcessCollector`` parses every entry of every file (about 12 µs
each): a deployment whose recycled workers and restarted API processes left 80 files took 2.3 s
a scrape. Here:

- entries are summed by their raw key, and each distinct key parsed once (about 1 µs an entry);
- the files of dead processes are folded into one archive file per type (``counter_archive.db``,
  ``histogram_archive.db``) and removed, so a scrape reads the live processes and the archive
  whatever the history. Folding holds an exclusive ``flock`` on the directory's lock file, and
  readers a shared one, so no scrape sees a count twice or not at all.

The files' layout is ``prometheus_client.mmap_dict``'s: a 4-byte used size and 4 bytes of padding,
then entries of a 4-byte key length, the UTF-8 key padded to 8 bytes, a double value and a double
timestamp. Counters and histograms only (``project.telemetry`` keeps no gauge in files).
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.utils import floatToGoString

_INT = struct.Struct("i").unpack_from
_DOUBLE = struct.Struct("d").unpack_from
TYPES = ("counter", "histogram")
ARCHIVE = "archive"


def _sum_file(path: Path, totals: dict[bytes, float]) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # folded into the archive by another process meanwhile
        return
    if len(data) < 8:
        return
    used = min(_INT(data, 0)[0], len(data))
    pos = 8
    while pos < used:
        length = _INT(data, pos)[0]
        if length <= 0 or pos + 4 + length > used:
            break  # a torn entry being written right now: the next scrape has it
        pos += 4
        key = data[pos:pos + length]
        pos += length + (8 - (length + 4) % 8)
        totals[key] = totals.get(key, 0.0) + _DOUBLE(data, pos)[0]
        pos += 16


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _files(directory: Path, kind: str) -> list[tuple[Path, int | None]]:
    """(path, pid) of each file of ``kind``; the archive's pid is None."""
    found: list[tuple[Path, int | None]] = []
    for path in directory.glob(f"{kind}_*.db"):
        owner = path.stem.split("_", 1)[1]
        if owner == ARCHIVE:
            found.append((path, None))
        elif owner.isdigit():
            found.append((path, int(owner)))
    return found


@contextmanager
def _locked(directory: Path, operation: int) -> Iterator[None]:
    with open(directory / "metrics.lock", "a+b") as lock:
        fcntl.flock(lock, operation)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def fold_dead_processes(directory: Path) -> int:
    """Add the files of processes that have exited into the archive and remove them; returns
    how many files were folded."""
    folded = 0
    with _locked(directory, fcntl.LOCK_EX):
        for kind in TYPES:
            dead = [path for path, pid in _files(directory, kind) if pid is not None and not _pid_alive(pid)]
            if not dead:
                continue
            totals: dict[bytes, float] = {}
            for path in dead:
                _sum_file(path, totals)
            archive = MmapedDict(str(directory / f"{kind}_{ARCHIVE}.db"))
            try:
                for raw_key, value in totals.items():
                    key = raw_key.decode()
                    current, _ = archive.read_value(key)
                    archive.write_value(key, current + value, 0.0)
            finally:
                archive.close()
            for path in dead:
                path.unlink(missing_ok=True)
            folded += len(dead)
    return folded


def read_totals(directory: Path) -> dict[str, dict[bytes, float]]:
    """Every series of every process, past and present, summed: {type: {raw key: value}}."""
    totals: dict[str, dict[bytes, float]] = {kind: {} for kind in TYPES}
    with _locked(directory, fcntl.LOCK_SH):
        for kind in TYPES:
            for path, _ in _files(directory, kind):
                _sum_file(path, totals[kind])
    return totals


@dataclass(frozen=True)
class Series:
    """One raw key, parsed once per process: the same keys come back at every scrape."""

    family: str
    help: str
    sample: str
    labels: dict[str, str]
    label_text: str  # '{a="x",b="y"}' or '', without le
    le: float | None  # a histogram bucket's upper bound


_series: dict[bytes, Series] = {}
_SERIES_CACHE_MAX = 100_000


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def series(raw_key: bytes) -> Series:
    found = _series.get(raw_key)
    if found is None:
        family, sample, labels, help_text = json.loads(raw_key)
        labels = {str(k): str(v) for k, v in labels.items()}
        le = labels.pop("le", None)
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        found = Series(
            family=family, help=help_text, sample=sample, labels=labels,
            label_text=f"{{{label_text}}}" if label_text else "",
            le=float(le) if le is not None else None,
        )
        if len(_series) >= _SERIES_CACHE_MAX:
            _series.clear()
        _series[raw_key] = found
    return found


def _number(value: float) -> str:
    # Counts are whole numbers: str(int) is several times cheaper than floatToGoString.
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value)}.0"
    return floatToGoString(value)


def exposition(totals: dict[str, dict[bytes, float]]) -> str:
    """The Prometheus text format (0.0.4) of the summed series: each family's HELP and TYPE,
    then its samples; a histogram's buckets made cumulative, with its ``_count``."""
    out: list[str] = []
    for kind in TYPES:
        families: dict[str, list[str]] = {}
        helps: dict[str, str] = {}
        buckets: dict[tuple[str, str, str], dict[float, float]] = defaultdict(dict)
        for raw_key, value in totals[kind].items():
            entry = series(raw_key)
            lines = families.setdefault(entry.family, [])
            helps[entry.family] = entry.help
            if entry.le is not None:
                bucket = buckets[(entry.family, entry.label_text, entry.sample)]
                bucket[entry.le] = bucket.get(entry.le, 0.0) + value
            else:
                lines.append(f"{entry.sample}{entry.label_text} {_number(value)}")
        for (family, label_text, sample), counts in buckets.items():
            lines = families[family]
            inner = label_text[1:-1] + "," if label_text else ""
            cumulative = 0.0
            for bound in sorted(counts):
                cumulative += counts[bound]
                lines.append(f'{sample}{{{inner}le="{floatToGoString(bound)}"}} {_number(cumulative)}')
            lines.append(f"{family}_count{label_text} {_number(cumulative)}")
        for family, lines in families.items():
            help_text = helps[family].replace("\\", "\\\\").replace("\n", "\\n")
            out.append(f"# HELP {family} {help_text}\n# TYPE {family} {kind}")
            out.extend(lines)
    return "\n".join(out) + "\n" if out else ""
