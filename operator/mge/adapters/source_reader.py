"""Reads TypeScript/JavaScript sources and extracts their module facts; large projects are parsed on two cores.

tree-sitter holds the GIL while it parses, so the second core is used by a second process
(`python -m mge.adapters.source_reader`). The two take files from opposite ends of the list and tell each
other which file they take, so they meet wherever the slower one is: no fixed split, which a loaded
machine would unbalance. A file both take at the same instant is parsed twice, never skipped.

Protocol (a frame is a 4-byte little-endian length and a pickle): the parent writes `(root, files)` as a
frame, then the index of each file it takes as 4 bytes. The second process writes `("take", index)`
before it parses a file and `("read", index, SourceFacts | None)` after (None: the file could not be read).
"""

import logging
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import mge
from mge.deps.ts_source import read_source
from mge.deps.typescript import SourceFacts

# Below this much source one process is faster: starting a second interpreter that can parse takes
# about 0.1 s, and tree-sitter parses TypeScript at 3-4 MB/s per core (the 2-core development machine:
# rxjs, 0.8 MB, is read by one process, zod, 3.1 MB, by two).
TWO_PROCESSES_FROM_BYTES = 1_000_000
_UINT = struct.Struct("<I")
log = logging.getLogger("mge.deps")


def read_file(root: Path, file: str) -> SourceFacts | None:
    """The file's facts; None when it cannot be read (it is then left out, like a file that vanished)."""
    try:
        source = (root / file).read_bytes()
    except OSError:
        return None
    return read_source(file, source)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _total_bytes(root: Path, files: list[str]) -> int:
    total = 0
    for file in files:
        try:
            total += (root / file).stat().st_size
        except OSError:
            continue
    return total


def frame(value: object) -> bytes:
    payload = pickle.dumps(value)
    return _UINT.pack(len(payload)) + payload


def frames(buffer: bytearray) -> Iterator[Any]:
    """The complete frames at the start of `buffer`, removed from it as they are read."""
    while len(buffer) >= _UINT.size:
        (length,) = _UINT.unpack_from(buffer)
        if len(buffer) < _UINT.size + length:
            return
        value = pickle.loads(bytes(buffer[_UINT.size : _UINT.size + length]))
        del buffer[: _UINT.size + length]
        yield value


def _drain(fd: int, buffer: bytearray) -> bool:
    """Append what the non-blocking `fd` holds to `buffer`; False once the writer has closed it."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return True
        if not chunk:
            return False
        buffer += chunk


def start_second_process(root: Path, files: list[str]) -> subprocess.Popen[bytes]:
    # The package may be importable through sys.path only (a checkout run with PYTHONPATH, or pytest).
    package_parent = str(Path(mge.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "mge.adapters.source_reader"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert process.stdin is not None
    process.stdin.write(frame((str(root), files)))
    process.stdin.flush()
    return process


def _send(stdin: IO[bytes], data: bytes | None) -> None:
    """Write to (or, with None, close) the second process's stdin; it may have finished or died already."""
    try:
        if data is None:
            stdin.close()
        else:
            stdin.write(data)
            stdin.flush()
    except BrokenPipeError:
        pass


def _read_with_second_process(root: Path, files: list[str]) -> tuple[list[SourceFacts], int]:
    """Facts of `files` in order, and how many of them the second process read."""
    process = start_second_process(root, files)
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    assert stdin is not None
    assert stdout is not None
    assert stderr is not None
    os.set_blocking(stdout.fileno(), False)
    buffer = bytearray()
    mine: dict[int, SourceFacts | None] = {}
    theirs: dict[int, SourceFacts | None] = {}
    lowest_taken = len(files)  # by the second process
    try:
        for index in range(len(files)):
            _drain(stdout.fileno(), buffer)
            for message in frames(buffer):
                if message[0] == "take":
                    lowest_taken = min(lowest_taken, message[1])
                else:
                    theirs[message[1]] = message[2]
            if index >= lowest_taken:
                break
            _send(stdin, _UINT.pack(index))
            mine[index] = read_file(root, files[index])
        if len(mine) + len(theirs) < len(files):
            # It stops by itself at the files taken here; wait for the ones it is still reading.
            _send(stdin, None)
            os.set_blocking(stdout.fileno(), True)
            buffer += stdout.read()
            theirs.update((message[1], message[2]) for message in frames(buffer) if message[0] == "read")
    finally:
        _send(stdin, None)
        if process.poll() is None:
            process.kill()
        process.wait()
    missing = [index for index in range(len(files)) if index not in mine and index not in theirs]
    if missing:
        # Only if it died: the analysis stays complete, the second core is lost; say why.
        failure = stderr.read().decode(errors="replace").strip()
        log.warning(
            "the second source reader process failed (exit %s): %s", process.returncode, failure[-2000:]
        )
        mine.update((index, read_file(root, files[index])) for index in missing)
    merged = {**theirs, **mine}
    facts = [merged[index] for index in range(len(files))]
    return [fact for fact in facts if fact is not None], len(set(theirs) - set(mine))


def scan_sources(root: Path, files: list[str], processes: int | None = None) -> list[SourceFacts]:
    """Parse the given TypeScript/JavaScript files with tree-sitter; facts come back in the order of `files`.

    `processes` (1 or 2) fixes the number of processes; by default two when the machine has a second
    core and the sources are large enough to pay for starting the second interpreter.
    """
    if processes is None:
        large = _total_bytes(root, files) >= TWO_PROCESSES_FROM_BYTES
        processes = 2 if large and _cores() > 1 else 1
    if processes > 1 and len(files) > 1:
        return _read_with_second_process(root, files)[0]
    return [facts for facts in (read_file(root, file) for file in files) if facts is not None]


def _second_process() -> None:
    """Take files from the end of the list until meeting the ones the parent took."""
    # Unbuffered reads: a buffered reader would swallow indices written right after the first frame.
    stdin = sys.stdin.fileno()
    pending = bytearray()
    while not (request := next(frames(pending), None)):
        chunk = os.read(stdin, 1 << 16)
        if not chunk:
            return
        pending += chunk
    root, files = request
    os.set_blocking(stdin, False)
    highest_taken = -1  # by the parent
    out = sys.stdout.buffer
    for index in range(len(files) - 1, -1, -1):
        _drain(stdin, pending)
        whole = len(pending) - len(pending) % _UINT.size
        for (taken,) in _UINT.iter_unpack(pending[:whole]):
            highest_taken = max(highest_taken, taken)
        del pending[:whole]
        if index <= highest_taken:
            break
        out.write(frame(("take", index)))
        out.flush()
        out.write(frame(("read", index, read_file(Path(root), files[index]))))
    out.flush()


if __name__ == "__main__":
    _second_process()
