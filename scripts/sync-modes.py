#!/usr/bin/env python3
"""Times the write-ahead log's two ways to the disk under `fsync: always`, side by side.

Writes 18 KB records one after another into a zero-filled 64 MiB file (as the log's
segments are), each followed by fdatasync, N times per mode, in alternated rounds:
- buffered: pwrite into the page cache, then fdatasync (the writeback runs in it);
- direct: O_DIRECT, whole 4 KiB blocks from an aligned buffer, the block the previous
  record ended in rewritten with the next one (as `node/src/log/wal.rs::Direct` does).

Prints mean, p50, p90 and p99 in µs per mode and round. Usage:
    scripts/sync-modes.py [DIR] [N] [ROUNDS]   (defaults: the current directory, 3000, 3)
The file is `DIR/sync-modes.bin`, removed afterwards; DIR must be on the disk to measure
(not tmpfs).
"""
import mmap
import os
import statistics
import sys
import time

RECORD = 18_000
FILE_BYTES = 64 << 20
BLOCK = 4096


def prepare(path):
    with open(path, "wb") as f:
        for _ in range(FILE_BYTES // (1 << 20)):
            f.write(b"\0" * (1 << 20))
        f.flush()
        os.fsync(f.fileno())


def buffered(path, n, data):
    fd = os.open(path, os.O_WRONLY)
    lat, pos = [], 0
    for _ in range(n):
        t = time.perf_counter_ns()
        os.pwrite(fd, data, pos)
        os.fdatasync(fd)
        lat.append((time.perf_counter_ns() - t) / 1000)
        pos = pos + RECORD if pos + 2 * RECORD <= FILE_BYTES else 0
    os.close(fd)
    return lat


def direct(path, n, data):
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, RECORD + 2 * BLOCK)  # page-aligned
    lat, pos, tail = [], 0, 0
    for _ in range(n):
        t = time.perf_counter_ns()
        start = pos - tail
        end = tail + RECORD
        padded = (end + BLOCK - 1) // BLOCK * BLOCK
        buf[tail:end] = data
        buf[end:padded] = bytes(padded - end)
        os.pwritev(fd, [memoryview(buf)[:padded]], start)
        os.fdatasync(fd)
        kept = end % BLOCK
        buf[0:kept] = buf[end - kept:end]
        tail = kept
        lat.append((time.perf_counter_ns() - t) / 1000)
        pos += RECORD
        if pos + 2 * RECORD > FILE_BYTES:
            pos, tail = 0, 0
    os.close(fd)
    return lat


def summary(lat):
    lat = sorted(lat)
    at = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))]
    return f"mean {statistics.mean(lat):.0f}  p50 {at(0.5):.0f}  p90 {at(0.9):.0f}  p99 {at(0.99):.0f} µs"


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    path = os.path.join(directory, "sync-modes.bin")
    prepare(path)
    data = os.urandom(RECORD)
    try:
        for r in range(rounds):
            modes = [("buffered", buffered), ("direct", direct)]
            for name, run in modes if r % 2 == 0 else reversed(modes):
                print(f"round {r + 1} {name:8}  {summary(run(path, n, data))}", flush=True)
    finally:
        os.remove(path)


if __name__ == "__main__":
    main()
