"""Wake-ups between the processes of one machine without Redis: Unix datagram sockets in a directory.

Without Redis, a worker's pusher and a server's stream readers learn of new work only by polling
the database. Here each listening process binds a datagram socket of its own in
``LOCAL_WAKEUPS_DIR`` (named ``<role>.<machine>.<pid>.<random>``), and a writer that committed
something sends a tiny datagram to every socket of the role concerned. A datagram is only a hint
("look again"): every listener keeps its database poll, so a datagram lost, dropped on a full
queue, or never sent (a writer on another machine: sockets only reach the local kernel) costs
latency, never correctness.

Sending never blocks and never raises: a full receive queue means the listener already has
wake-ups pending, so the datagram is skipped; a socket nobody listens on any more (its process
died without removing it) is unlinked by the first sender that finds it.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import secrets
import select
import socket
import time
from multiprocessing import util as multiprocessing_util
from pathlib import Path

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

# sun_path holds 108 bytes on Linux (104 on the BSDs) including its NUL.
_MAX_ADDRESS_BYTES = 103
# A listing is reused while the directory's mtime is unchanged, but only once it was taken this
# long after that mtime: the kernel stamps mtimes with a coarse clock, so a socket bound within the
# same tick as an earlier change would otherwise leave the mtime as it was.
_MTIME_SETTLE_NS = 50_000_000
# And never longer than this, whatever the clocks do.
_LISTING_MAX_AGE_NS = 1_000_000_000
# Senders remove the dead sockets of the roles they send to; a listener opening also sweeps the
# directory for those of roles nobody sends to any more (a test database long gone), this seldom.
_SWEEP_EVERY_S = 60.0


def _queue_limit() -> int:
    """Datagrams a socket queues before senders see EAGAIN (Linux: net.unix.max_dgram_qlen)."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return 10


QUEUE_LIMIT = _queue_limit()
# What a listener reads of a datagram: a longer payload arrives cut short.
MAX_PAYLOAD_BYTES = 4096


def _machine() -> str:
    """Which kernel this process runs on: only its sockets can be reached, or judged dead.

    A ``DATA_DIR`` on a shared filesystem may hold sockets bound on other machines; sending to one
    fails as if its process were dead, and unlinking it would cut that machine's own wake-ups.
    Containers on one host share the boot id, and can reach each other's sockets on a shared volume.
    """
    try:
        identity = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        identity = socket.gethostname()
    return hashlib.sha1(identity.encode()).hexdigest()[:8]


_MACHINE = _machine()


def directory() -> Path | None:
    """Where the sockets live, or None when local wake-ups are off (``LOCAL_WAKEUPS_DIR`` empty,
    or no Unix sockets on this platform)."""
    return _directory(getattr(settings, "LOCAL_WAKEUPS_DIR", ""))


@functools.lru_cache(maxsize=8)
def _directory(configured: str) -> Path | None:
    if not configured or not hasattr(socket, "AF_UNIX"):
        return None
    return Path(configured)


def enabled() -> bool:
    return directory() is not None


@functools.lru_cache(maxsize=64)
def role(kind: str, *scope: object) -> str:
    """A role name: ``kind`` and a digest of what the listeners share (a database, a queue), so
    processes of other databases (other test runs, other benches) using the same directory are
    never woken for nothing."""
    digest = hashlib.sha1("\0".join(str(part) for part in scope).encode()).hexdigest()[:10]
    return f"{kind}-{digest}"


def database_scope(alias: str = "default") -> tuple[str, str]:
    """What identifies a database among those whose processes may share the directory: its
    vendor and name (a SQLite file by its real path). Read from the connection at each call: the
    test runner renames the database after settings are loaded."""
    connection = connections[alias]
    return _scope_of(connection.vendor, str(connection.settings_dict.get("NAME") or ""))


@functools.lru_cache(maxsize=16)
def _scope_of(vendor: str, name: str) -> tuple[str, str]:
    # Cached: resolving a path is a system call per component, and every publish asks.
    if vendor == "sqlite" and name and not name.startswith(("file:", ":memory:")):
        name = os.path.realpath(name)
    return vendor, name


# --- addresses -------------------------------------------------------------------------------------


class _Place:
    """A process's handle on the directory: its path and, when the path is too long for a socket
    address, a directory descriptor to reach it through ``/proc/self/fd`` instead."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pid = os.getpid()
        self._fd: int | None = None
        self._addresses: dict[str, str] = {}
        self._listing: tuple[int, int, tuple[str, ...]] = (-1, 0, ())  # mtime, taken at, names

    def address(self, name: str) -> str:
        address = self._addresses.get(name)
        if address is None:
            address = f"{self.path}{os.sep}{name}"
            if len(os.fsencode(address)) > _MAX_ADDRESS_BYTES:
                if self._fd is None:
                    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC
                    self._fd = os.open(self.path, flags)
                address = f"/proc/self/fd/{self._fd}/{name}"
            if len(self._addresses) > 1000:  # names of processes long gone
                self._addresses.clear()
            self._addresses[name] = address
        return address

    def names(self) -> tuple[str, ...]:
        """The socket names in the directory (missing directory: none), from a short-lived cache."""
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return ()
        cached_mtime, taken_at, names = self._listing
        now = time.time_ns()
        if (
            mtime == cached_mtime
            and taken_at - mtime > _MTIME_SETTLE_NS
            and now - taken_at < _LISTING_MAX_AGE_NS
        ):
            return names
        try:
            names = tuple(os.listdir(self.path))
        except FileNotFoundError:
            names = ()
        # The mtime read before listing: a change made during it makes the next call list again.
        self._listing = (mtime, now, names)
        return names

    def forget_listing(self) -> None:
        self._listing = (-1, 0, ())


_places: dict[tuple[int, Path], _Place] = {}


def _place(path: Path) -> _Place:
    # Keyed by pid: a forked child must not share the parent's directory descriptor bookkeeping.
    key = (os.getpid(), path)
    place = _places.get(key)
    if place is None:
        place = _places[key] = _Place(path)
    return place


# --- senders ---------------------------------------------------------------------------------------

_senders: dict[int, socket.socket] = {}


def _sender() -> socket.socket:
    # One unbound socket per process (by pid: a forked child gets its own), shared by its threads:
    # sendto on one socket from several threads is safe.
    sock = _senders.get(os.getpid())
    if sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        _senders[os.getpid()] = sock
    return sock


def send(role_name: str, payload: bytes = b"") -> int:
    """Send ``payload`` to every listener of ``role_name`` on this machine; how many got it.

    Never blocks and never raises: wake-ups are hints, and the caller has already committed.
    """
    path = directory()
    if path is None:
        return 0
    try:
        place = _place(path)
        prefix = f"{role_name}.{_MACHINE}."
        targets = [name for name in place.names() if name.startswith(prefix)]
        if not targets:
            return 0
        sock = _sender()
    except OSError:
        logger.debug("local wake-ups: could not read %s", path, exc_info=True)
        return 0
    sent = 0
    for name in targets:
        try:
            sock.sendto(payload, socket.MSG_DONTWAIT, place.address(name))
            sent += 1
        except BlockingIOError:
            pass  # its queue is full: it has wake-ups pending already
        except (ConnectionRefusedError, FileNotFoundError):
            # Nobody bound to it: its process died without removing it.
            _unlink(path / name)
            place.forget_listing()
        except OSError:
            logger.debug("local wake-ups: could not send to %s", name, exc_info=True)
    return sent


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.debug("local wake-ups: could not remove %s", path, exc_info=True)


# --- listeners -------------------------------------------------------------------------------------

_last_sweep: dict[int, float] = {}


def _sweep(place: _Place) -> None:
    """Remove this machine's sockets nobody is bound to any more (a connect is refused)."""
    if time.monotonic() - _last_sweep.get(os.getpid(), -_SWEEP_EVERY_S) < _SWEEP_EVERY_S:
        return
    _last_sweep[os.getpid()] = time.monotonic()
    mark = f".{_MACHINE}."
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        for name in place.names():
            if mark not in name:
                continue
            try:
                probe.connect(place.address(name))
            except ConnectionRefusedError:
                _unlink(place.path / name)
            except OSError:
                pass


def _release(sock: socket.socket, path: Path, pid: int) -> None:
    if os.getpid() == pid:  # a forked child finalizing its copy must not remove its parent's
        _unlink(path)
    sock.close()


class Listener:
    """A socket of this process that senders of ``role_name`` reach; ``close()`` removes it.

    Belongs to the process that opened it: a forked child holding the object must open its own
    (key listeners by pid). Removed on garbage collection and at exit too; a process killed
    outright leaves the file, which the next sender or sweep removes.
    """

    def __init__(self, role_name: str, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        place = _place(path)
        _sweep(place)
        self.role = role_name
        self.pid = os.getpid()
        self.name = f"{role_name}.{_MACHINE}.{self.pid}.{secrets.token_hex(4)}"
        self.path = path / self.name
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind(place.address(self.name))
        except BaseException:
            self._sock.close()
            raise
        # multiprocessing's finalizer rather than weakref's: besides garbage collection and exit,
        # it also runs when a multiprocessing child (django-q2's pusher) returns, which skips
        # atexit; and a child forked after this forgets it instead of running it.
        self._finalizer = multiprocessing_util.Finalize(
            self, _release, args=(self._sock, self.path, self.pid), exitpriority=0
        )

    @classmethod
    def open(cls, role_name: str) -> Listener | None:
        """A listener, or None when local wake-ups are off or the socket cannot be made (the
        caller then relies on its database poll alone)."""
        path = directory()
        if path is None:
            return None
        try:
            return cls(role_name, path)
        except OSError:
            logger.warning("local wake-ups: cannot listen in %s; polling only", path, exc_info=True)
            return None

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self, limit: int = 1024) -> list[bytes]:
        """The datagrams queued so far (at most ``limit``), without waiting."""
        received: list[bytes] = []
        while len(received) < limit:
            try:
                received.append(self._sock.recv(MAX_PAYLOAD_BYTES))
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    break
                raise
        return received

    def wait(self, timeout: float) -> list[bytes]:
        """Block up to ``timeout`` seconds for a datagram; everything queued by then."""
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        if poller.poll(max(0.0, timeout) * 1000):
            return self.drain()
        return []

    def close(self) -> None:
        self._finalizer()
