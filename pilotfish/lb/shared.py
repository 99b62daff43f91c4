"""Connection counts every worker sees: one table per worker in shared memory, written only by its
own worker, summed by whoever reads (no locks, no messages on the connection path).

With `--workers N` each worker process carries its own clients, but least-connections, p2c and
the `max_connections` limits must see the whole machine. The parent creates one file in
/dev/shm holding N regions (and unlinks it at once: workers open it as /proc/PARENT/fd/FD, so
nothing is left behind even by a killed parent); worker i attaches and writes only region i, a
hash table of rows (key hash, count). A reader sums a key's count over every region: it finds
the key at the same row in each region almost always (same hash, same table size), else probes.
A write is one 8-byte store of the writer's own row, so a reader sees each worker's count
either before or after a change, never torn; the sum is exact up to connections in flight at
that instant (a limit may be passed by at most N-1 when N workers admit at the same moment).

A worker that dies leaves its counts behind until the worker started in its place attaches and
clears its region (after the supervisor's restart backoff, 0.1 s at first).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import secrets
import tempfile

log = logging.getLogger(__name__)

MAGIC = 0x70666C62  # "pflb"
HEADER = 4  # int64 words: magic, workers, rows, spare
ROWS = 1 << 14  # keys per worker: routes + their backends (16 bytes each: 256 KiB per worker)
EMPTY = 0
GONE = -1  # a released row: probing goes on past it


ALL = "*"  # the row of every route's connections


def route_key(route: str) -> str:
    """The row of one route's open connections."""
    return f"r|{route}"


def backend_key(route: str, backend: str) -> str:
    """The row of one backend's open connections on one route."""
    return f"b|{route}|{backend}"


def turns_key(route: str) -> str:
    """The row round robin takes its turns from on one route."""
    return f"t|{route}"


def key_hash(key: str) -> int:
    """A key's 64-bit signed hash, never EMPTY or GONE."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big",
                           signed=True)
    return value if value not in (EMPTY, GONE) else 1


def _directory() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class Cell:
    """One key's row in this worker's region: `add` moves this worker's count, `total` reads
    every worker's."""

    __slots__ = ("counts", "key", "hash", "index", "positions", "refs")

    def __init__(self, counts: SharedCounts, key: str, hash_: int, index: int) -> None:
        self.counts = counts
        self.key = key
        self.hash = hash_
        self.index = index  # this worker's count, as an index into counts.words
        row = (index - HEADER) // 2 % counts.rows
        # where each region's row for this key is expected (the value's word index)
        self.positions = [counts.word(w, row) + 1 for w in range(counts.workers)]
        self.refs = 1

    def add(self, delta: int) -> None:
        """This worker's count moves by delta (only its own worker writes it)."""
        self.counts.words[self.index] += delta

    def total(self) -> int:
        """The count summed over every worker."""
        words = self.counts.words
        hash_ = self.hash
        total = 0
        positions = self.positions
        for region, position in enumerate(positions):
            if words[position - 1] == hash_:
                total += words[position]
                continue
            found = self.counts.find(region, hash_)
            if found is not None:
                positions[region] = found
                total += words[found]
        return total


class SharedCounts:
    """The shared-memory file of every worker's counts (see the module's docstring)."""

    def __init__(self, path: str, worker: int | None) -> None:
        fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.path = path
        self.words = memoryview(self._map).cast("q")
        if self.words[0] != MAGIC:
            raise ValueError(f"{path}: not a pilotfish counts file")
        self.workers = int(self.words[1])
        self.rows = int(self.words[2])
        self.worker = worker  # whose region this process writes (None: the parent, reads only)
        self._cells: dict[str, Cell] = {}
        self._full_logged = False
        self._kept: int | None = None  # the parent's descriptor of the (unlinked) file
        if worker is not None:
            if not 0 <= worker < self.workers:
                raise ValueError(f"worker {worker}: the file has {self.workers} regions")
            self.clear(worker)

    @classmethod
    def create(cls, workers: int, rows: int = ROWS, directory: str | None = None) \
            -> SharedCounts:
        """A new, zeroed file for `workers` regions (the parent's; it unlinks it at the end)."""
        name = f"pilotfish-lb-{os.getpid()}-{secrets.token_hex(4)}"
        path = os.path.join(directory or _directory(), name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.unlink(path)  # nothing is left behind, even by a killed parent
            os.ftruncate(fd, 8 * (HEADER + 2 * workers * rows))
            with mmap.mmap(fd, 8 * HEADER) as header:
                words = memoryview(header).cast("q")
                words[1], words[2], words[0] = workers, rows, MAGIC
                words.release()
            # workers open it through the parent's descriptor, which it keeps until `unlink`
            counts = cls(f"/proc/{os.getpid()}/fd/{fd}", None)
        except BaseException:
            os.close(fd)
            raise
        counts._kept = fd
        return counts

    @classmethod
    def attach(cls, path: str, worker: int) -> SharedCounts:
        """Open the parent's file as worker `worker`, its region cleared."""
        return cls(path, worker)

    def word(self, region: int, row: int) -> int:
        """The word index of a region's row (its key; the count is the next word)."""
        return HEADER + 2 * (region * self.rows + row)

    def find(self, region: int, hash_: int) -> int | None:
        """The word index of the key's count in a region, or None when it has none."""
        words, rows = self.words, self.rows
        start = hash_ % rows
        for step in range(rows):
            index = self.word(region, (start + step) % rows)
            found = words[index]
            if found == hash_:
                return index + 1
            if found == EMPTY:
                return None
        return None

    def cell(self, key: str) -> Cell | None:
        """This worker's row for `key` (shared by every holder of the key in this process);
        None when the region is full (the caller then counts only locally)."""
        assert self.worker is not None, "the parent only reads"
        cell = self._cells.get(key)
        if cell is not None:
            cell.refs += 1
            return cell
        hash_, words, rows = key_hash(key), self.words, self.rows
        start = hash_ % rows
        for step in range(rows):
            index = self.word(self.worker, (start + step) % rows)
            if words[index] in (EMPTY, GONE):
                words[index + 1] = 0
                words[index] = hash_
                cell = self._cells[key] = Cell(self, key, hash_, index + 1)
                return cell
        if not self._full_logged:
            self._full_logged = True
            log.warning("lb: shared counts full (%d keys per worker): new backends are "
                        "counted per worker", rows)
        return None

    def release(self, cell: Cell) -> None:
        """A holder of the key is done with it; the last one frees the row."""
        cell.refs -= 1
        if cell.refs > 0 or self._cells.get(cell.key) is not cell:
            return
        del self._cells[cell.key]
        self.words[cell.index - 1] = GONE
        self.words[cell.index] = 0

    def total(self, key: str) -> int:
        """A key's count summed over every worker (the parent's reads, tests)."""
        hash_ = key_hash(key)
        total = 0
        for region in range(self.workers):
            found = self.find(region, hash_)
            if found is not None:
                total += self.words[found]
        return total

    def clear(self, worker: int) -> None:
        """Forget a region's counts: its worker is gone, or starts afresh."""
        start = self.word(worker, 0)
        self.words[start:start + 2 * self.rows] = memoryview(bytes(16 * self.rows)).cast("q")
        if worker == self.worker:
            self._cells.clear()

    def close(self) -> None:
        """Unmap the file (cells must not be used after)."""
        self._cells.clear()
        self.words.release()
        with contextlib.suppress(BufferError):
            self._map.close()

    def unlink(self) -> None:
        """Let the file go (the parent, at the end: no worker can attach after this)."""
        if self._kept is not None:
            os.close(self._kept)
            self._kept = None
