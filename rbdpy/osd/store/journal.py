"""The write-ahead journal: one segment file per checkpoint epoch, records appended in
sequence, scanned on open for replay.

A segment is ``journal.<gen>``: a header [magic, gen, random salt, crc], then records
[magic, len, seq, salt, crc, hdr-crc | payload] (``format``). A checkpoint rotates to a new
segment and retires the old ones; the newest retired one is kept as ``journal.spare`` and
recycled under a new salt, because overwriting allocated blocks makes each commit's fdatasync
cheaper and freeing a big file (with discard) is slow. Stale records of its earlier use carry
the old salt, so a scan never takes them for live ones.
"""

from __future__ import annotations

import logging
import os

from rbdpy.crc import crc32c
from rbdpy.osd.store import format as fmt
from rbdpy.osd.store.blockio import fsync_dir, pwritev_all

log = logging.getLogger(__name__)

# one journal record as scanned: (seq, oid, mtime, effective ops)
Record = tuple[int, str, float, list[tuple]]


class Journal:
    """The segments under ``path`` and the append position in the active one.

    Not thread-safe: the store calls it under its state lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        self.gen = 0
        self.pos = 0
        self.salt = 0
        self.old_fds: list[int] = []  # segments of failed checkpoints, still to replay
        self.rollback_error: OSError | None = None  # a failed append could not be undone

    def segment_path(self, gen: int) -> str:
        return os.path.join(self.path, f"journal.{gen:016d}")

    def gens(self) -> list[int]:
        """The generations of the segments present, oldest first."""
        return sorted(int(n.split(".", 1)[1]) for n in os.listdir(self.path)
                      if n.startswith("journal.") and n.split(".", 1)[1].isdigit())

    def exists(self) -> bool:
        return any(n.startswith("journal.") for n in os.listdir(self.path))

    # -- open: scan, then start appending -----------------------------------------------------

    def scan(self, first_gen: int, first_seq: int) -> tuple[list[Record], int, int]:
        """The records to replay after a checkpoint that covers up to ``first_seq - 1`` and
        whose journal starts at segment ``first_gen``: (records, active gen, end of its valid
        records). Older segments are deleted; segments after a sequence gap are moved aside
        (``.corrupt``): nothing in them can continue the sequence."""
        gens = self.gens()
        for g in gens:
            if g < first_gen:
                os.unlink(self.segment_path(g))
        gens = [g for g in gens if g >= first_gen]
        active, end = first_gen, fmt.SEG_LEN
        records: list[Record] = []
        for i, g in enumerate(gens):
            active = g
            end, gap = self._scan_segment(g, first_seq + len(records), records)
            if gap:
                for later in gens[i + 1:]:
                    log.error("journal %d follows a sequence gap; moved aside", later)
                    os.rename(self.segment_path(later), self.segment_path(later) + ".corrupt")
                break
        return records, active, end

    def open_active(self, gen: int, end: int) -> None:
        """Append to segment ``gen`` from ``end`` (past its valid records: what follows is
        torn or stale and gets overwritten), creating it if needed; make it durable."""
        self.gen = gen
        self.fd = os.open(self.segment_path(gen), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        salt = _read_salt(self.fd, gen)
        if salt is None:  # new, or its header never made it: nothing in it can be valid
            self.salt = _init_segment(self.fd, gen)
            self.pos = fmt.SEG_LEN
        else:
            self.salt = salt
            self.pos = end
        os.fdatasync(self.fd)  # what was replayed from the page cache is now durable
        fsync_dir(self.path)

    def _scan_segment(self, gen: int, expected: int, out: list[Record]) -> tuple[int, bool]:
        """Collect the records of one journal segment that continue the sequence.

        Returns (end of the valid records, whether a sequence gap was found). Scanning stops at
        the first torn/invalid record or at one with an older sequence: segments are recycled,
        so stale records of an earlier use may follow the live ones. Nothing is truncated; the
        active segment is simply overwritten from the valid end."""
        fd = os.open(self.segment_path(gen), os.O_RDWR | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            salt = _read_salt(fd, gen)
            if salt is None:
                return fmt.SEG_LEN, False
            pos = fmt.SEG_LEN
            gap = False
            n = 0
            while pos < size:
                rec = _read_record(fd, pos, size, salt)
                if rec is None:
                    break
                seq, payload, rlen = rec
                if seq != expected:
                    if seq > expected:
                        log.error("journal %d: sequence gap at offset %d (%d, expected %d)",
                                  gen, pos, seq, expected)
                        gap = True
                    break
                out.append((seq, *fmt.decode_txn(payload)))
                expected += 1
                pos += rlen
                n += 1
            if n:
                os.fdatasync(fd)  # replayed from the page cache: make it durable now
            return pos, gap
        finally:
            os.close(fd)

    # -- append -------------------------------------------------------------------------------

    def append(self, seq: int, iov: list) -> None:
        """Append one record with payload ``iov``. On an OSError the partial record is
        truncated away, so the journal stays clean, and the error propagates; if even that
        truncation fails, ``rollback_error`` says so (the store must then stop)."""
        pcrc = 0
        total = 0
        for b in iov:
            pcrc = crc32c(b, pcrc)
            total += len(b)
        hdr = fmt.record_header(total, seq, self.salt, pcrc)
        pos = self.pos
        self.rollback_error = None
        try:
            pwritev_all(self.fd, [hdr, *iov], pos, fmt.J_HDR_LEN + total)
        except OSError:
            try:
                os.ftruncate(self.fd, pos)
            except OSError as e2:
                self.rollback_error = e2
            raise
        self.pos = pos + fmt.J_HDR_LEN + total

    # -- checkpoint: rotate and retire --------------------------------------------------------

    def empty(self) -> bool:
        """No record in the active segment."""
        return self.pos <= fmt.SEG_LEN

    def rotate(self) -> tuple[int, int]:
        """Start the next segment; returns the (fd, gen) of the one it replaces, which stays
        open until a checkpoint makes it redundant."""
        old_fd, old_gen = self.fd, self.gen
        fd, salt = self._new_segment(old_gen + 1)
        self.fd, self.gen, self.pos, self.salt = fd, old_gen + 1, fmt.SEG_LEN, salt
        return old_fd, old_gen

    def _new_segment(self, gen: int) -> tuple[int, int]:
        """Open segment ``gen`` with a fresh salt, recycling the spare."""
        spare = os.path.join(self.path, "journal.spare")
        path = self.segment_path(gen)
        try:
            os.rename(spare, path)
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            return fd, _init_segment(fd, gen)
        except OSError:
            os.close(fd)
            raise

    def release_old(self) -> None:
        """Close the segments that failed checkpoints kept (a checkpoint now covers them)."""
        while self.old_fds:
            os.close(self.old_fds.pop())

    def retire(self, upto: int, spare_max: int) -> None:
        """Drop the segments a checkpoint made redundant, keeping the newest as the spare
        (unless it grew past ``spare_max`` bytes)."""
        spare = os.path.join(self.path, "journal.spare")
        for g in reversed([g for g in self.gens() if g <= upto]):
            path = self.segment_path(g)
            try:
                if not os.path.exists(spare) and os.stat(path).st_size <= spare_max:
                    os.rename(path, spare)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        os.close(self.fd)
        for fd in self.old_fds:
            os.close(fd)
        self.old_fds.clear()


def _init_segment(fd: int, gen: int) -> int:
    salt = int.from_bytes(os.urandom(8), "little")
    pwritev_all(fd, [fmt.segment_header(gen, salt)], 0)
    return salt


def _read_salt(fd: int, gen: int) -> int | None:
    """The salt from a journal segment's header, None if the header is not valid."""
    return fmt.segment_salt(os.pread(fd, fmt.S_HDR.size + 4, 0), gen)


def _read_record(fd: int, pos: int, size: int, salt: int) -> tuple[int, memoryview, int] | None:
    """A valid record at ``pos`` (seq, payload, record length) or None."""
    if size - pos < fmt.J_HDR_LEN:
        return None
    hdr = fmt.parse_record_header(os.pread(fd, fmt.J_HDR_LEN, pos), salt)
    if hdr is None:
        return None
    ln, seq, pcrc = hdr
    if ln > size - pos - fmt.J_HDR_LEN:
        return None
    payload = os.pread(fd, ln, pos + fmt.J_HDR_LEN)
    if len(payload) != ln or crc32c(payload) != pcrc:
        return None
    return seq, memoryview(payload), fmt.J_HDR_LEN + ln


def protected_blocks(records: list[Record], bs: int) -> dict[str, dict[int, int]]:
    """For replay: per object, block -> index of the last record that direct-wrote it.

    A direct write's data exists only in the object file, so replaying an earlier record
    must not overwrite those blocks."""
    prot: dict[str, dict[int, int]] = {}
    for idx, (_seq, oid, _mtime, ops) in enumerate(records):
        for op in ops:
            if op[0] == fmt.OP_WRITE_DIRECT:
                p = prot.setdefault(oid, {})
                for b in range(op[1] // bs, (op[1] + op[2]) // bs):
                    p[b] = idx
    return prot
