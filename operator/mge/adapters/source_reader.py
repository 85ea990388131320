"""Reads TypeScript/JavaScript sources and extracts their module facts; large projects are parsed on two cores.

tree-sitter holds the GIL while it parses, so the second core is used by a second process. The two take
files from opposite ends of the list and tell each other which file they take, so they meet wherever the
slower one is: no fixed split, which a loaded machine would unbalance. A file both take at the same
instant is parsed twice, never skipped.

The second process is a fork when this process runs a single thread (the CLI: a fork starts in about a
millisecond); with other threads running (`mge run` analyses in a worker thread), where a fork may copy a
lock some other thread holds, it is a new interpreter, `python -m mge.adapters.source_reader` (about 0.1 s
to start), sent `(root, files)` as the first frame on its stdin.

Protocol (a frame is a 4-byte little-endian length and a pickle): the parent writes the index of each file
it takes as 4 bytes. The second process writes `("take", index)` before it parses a file and
`("read", index, SourceFacts | None)` after (None: the file could not be read).
"""

import contextlib
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mge
from mge.deps.ts_source import read_source
from mge.deps.typescript import SourceFacts

# Below this much source one process is at least as fast: tree-sitter parses TypeScript at about 10 MB/s per
# core, and the second process needs a moment to start (figures of the 2-core development machine).
FORK_FROM_BYTES = 200_000
SPAWN_FROM_BYTES = 1_000_000
_UINT = struct.Struct("<I")
log = logging.getLogger("mge.deps")


def read_file(root: Path, file: str) -> SourceFacts | None:
    """The file's facts; None when it cannot be read (it is then left out, like a file that vanished)."""
    try:
        source = (root / file).read_bytes()
    except OSError:
        return None
    return read_source(file, source)


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


def _write(fd: int, data: bytes) -> None:
    """Write all of `data`; the other side may have finished or died already, which is not an error here."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass


def read_from_the_end(
    root: Path, files: list[str], taken_fd: int, out_fd: int, received: bytearray | None = None
) -> None:
    """The second process's work: files from the end of the list until meeting those the parent took.

    `received`: bytes already read from `taken_fd`.
    """
    os.set_blocking(taken_fd, False)
    pending = received if received is not None else bytearray()
    highest_taken = -1  # by the parent
    for index in range(len(files) - 1, -1, -1):
        _drain(taken_fd, pending)
        whole = len(pending) - len(pending) % _UINT.size
        for (taken,) in _UINT.iter_unpack(pending[:whole]):
            highest_taken = max(highest_taken, taken)
        del pending[:whole]
        if index <= highest_taken:
            break
        _write(out_fd, frame(("take", index)))
        _write(out_fd, frame(("read", index, read_file(root, files[index]))))


@dataclass
class _SecondProcess:
    pid: int
    to_it: int  # the indices the parent takes
    from_it: int  # its frames
    popen: subprocess.Popen[bytes] | None = None  # a new interpreter; None for a fork

    def finish(self) -> tuple[int, str]:
        """Stop it if it still runs; its exit status and, for a new interpreter, its stderr."""
        for fd in (self.to_it, self.from_it):
            os.close(fd)
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            _, errors = self.popen.communicate()
            return self.popen.returncode, errors.decode(errors="replace").strip()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        _, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), "(a fork: its traceback went to stderr)"


def _fork(root: Path, files: list[str]) -> _SecondProcess:
    taken_read, taken_write = os.pipe()
    out_read, out_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, then leave without running the parent's exit handlers or buffers
        code = 0
        try:
            os.close(taken_write)
            os.close(out_read)
            read_from_the_end(root, files, taken_read, out_write)
        except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
            code = 130
        except BaseException:
            os.write(2, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(taken_read)
    os.close(out_write)
    return _SecondProcess(pid, taken_write, out_read)


def start_interpreter(root: Path, files: list[str]) -> _SecondProcess:
    # The package may be importable through sys.path only (a checkout run with PYTHONPATH, or pytest).
    package_parent = str(Path(mge.__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH", "")) if p)
    popen = subprocess.Popen(
        [sys.executable, "-m", "mge.adapters.source_reader"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert popen.stdin is not None
    assert popen.stdout is not None
    # Raw descriptors from here on: the protocol never goes through Python's buffered files.
    second = _SecondProcess(popen.pid, os.dup(popen.stdin.fileno()), os.dup(popen.stdout.fileno()), popen)
    popen.stdin.close()
    popen.stdout.close()
    popen.stdin = popen.stdout = None
    _write(second.to_it, frame((str(root), files)))
    return second


def _read_with_second_process(root: Path, files: list[str], fork: bool) -> tuple[list[SourceFacts], int]:
    """Facts of `files` in order, and how many of them the second process read."""
    try:
        second = _fork(root, files) if fork else start_interpreter(root, files)
    except OSError as error:  # no process to be had (limits, memory): one core does it all
        log.warning("the second source reader process could not start: %s", error)
        return [fact for fact in (read_file(root, file) for file in files) if fact is not None], 0
    os.set_blocking(second.from_it, False)
    buffer = bytearray()
    mine: dict[int, SourceFacts | None] = {}
    theirs: dict[int, SourceFacts | None] = {}
    lowest_taken = len(files)  # by the second process
    try:
        for index in range(len(files)):
            _drain(second.from_it, buffer)
            for message in frames(buffer):
                if message[0] == "take":
                    lowest_taken = min(lowest_taken, message[1])
                else:
                    theirs[message[1]] = message[2]
            if index >= lowest_taken:
                break
            _write(second.to_it, _UINT.pack(index))
            mine[index] = read_file(root, files[index])
        if len(mine) + len(theirs) < len(files):
            # It stops by itself at the files taken here; wait for the ones it is still reading.
            os.set_blocking(second.from_it, True)
            while chunk := os.read(second.from_it, 1 << 16):
                buffer += chunk
            theirs.update((message[1], message[2]) for message in frames(buffer) if message[0] == "read")
    finally:
        status, errors = second.finish()
    missing = [index for index in range(len(files)) if index not in mine and index not in theirs]
    if missing:
        # Only if it died: the analysis stays complete, the second core is lost; say why.
        log.warning("the second source reader process failed (exit %s): %s", status, errors[-2000:])
        mine.update((index, read_file(root, files[index])) for index in missing)
    merged = {**theirs, **mine}
    facts = [merged[index] for index in range(len(files))]
    return [fact for fact in facts if fact is not None], len(set(theirs) - set(mine))


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


def scan_sources(root: Path, files: list[str], processes: int | None = None) -> list[SourceFacts]:
    """Parse the given TypeScript/JavaScript files with tree-sitter; facts come back in the order of `files`.

    `processes` (1 or 2) fixes the number of processes; by default two when the machine has a second
    core and the sources are large enough to pay for starting the second process.
    """
    fork = hasattr(os, "fork") and threading.active_count() == 1
    if processes is None:
        enough = _total_bytes(root, files) >= (FORK_FROM_BYTES if fork else SPAWN_FROM_BYTES)
        processes = 2 if enough and _cores() > 1 else 1
    if processes > 1 and len(files) > 1:
        return _read_with_second_process(root, files, fork)[0]
    return [facts for facts in (read_file(root, file) for file in files) if facts is not None]


def _main() -> None:
    """A new interpreter as the second process: the first frame on stdin is `(root, files)`."""
    # Unbuffered reads: a buffered reader would swallow the indices written right after the first frame.
    pending = bytearray()
    while not (request := next(frames(pending), None)):
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return
        pending += chunk
    root, files = request
    read_from_the_end(Path(root), files, 0, 1, received=pending)


if __name__ == "__main__":
    _main()
