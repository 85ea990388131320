"""Folders `mge run` writes: it empties only folders it created (a marker inside says so) and locks its state."""

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Final

STATE_MARKER: Final = ".mge-state"
OUT_MARKER: Final = ".mge-out"
_MARKER_TEXT: Final = "Written by `mge run`: it may empty this folder on the next run.\n"


class FolderRefused(ValueError):
    """A folder mge will not use; the message says why and what to pass instead."""


def _owned_or_empty(folder: Path, marker: str, option: str) -> None:
    if not folder.exists():
        return
    if not folder.is_dir():
        raise FolderRefused(f"{option} {folder}: exists and is not a folder; pick another path")
    if (folder / marker).is_file() or not any(folder.iterdir()):
        return
    raise FolderRefused(
        f"{option} {folder}: the folder is not empty and was not created by `mge run` (no {marker} file); "
        "mge never deletes files it did not write: pick a new or empty folder"
    )


def check_out_dir(folder: Path) -> None:
    """Refuse, before anything runs, an output folder mge would have to delete someone else's files from."""
    _owned_or_empty(folder, OUT_MARKER, "--out")


def check_separate(out: Path, state_dir: Path, cache_dir: Path | None) -> None:
    """The output folder is emptied at the end of a run: it must not hold (or sit inside) the run's state."""
    named = {"--out": out.resolve(), "--state-dir": state_dir.resolve()}
    if cache_dir is not None:
        named["--cache-dir"] = cache_dir.resolve()
    out_path = named["--out"]
    for option, path in named.items():
        if option != "--out" and (path == out_path or path.is_relative_to(out_path)):
            raise FolderRefused(f"--out {out} contains {option} {path}: use separate folders")
        if option == "--state-dir" and out_path.is_relative_to(path):
            raise FolderRefused(f"--out {out} is inside --state-dir {state_dir}: use separate folders")


def record_problem(recording: Path, *, llm: str, resume: bool) -> str | None:
    """Why `mge run --record` must not start (None if it may): a recording is paid for and never overwritten."""
    if llm != "openai":
        return f"--record keeps the answers of a real endpoint: use it with --llm openai, not --llm {llm}"
    if recording.exists() and not resume:
        return (
            f"{recording} exists and --record never overwrites a recording: move it away first (or add "
            "--resume to continue the run that made it; its answers are appended)"
        )
    return None


def reset_out_dir(folder: Path) -> None:
    """Empty (or create) the output folder and mark it as mge's; refuses a folder mge does not own."""
    check_out_dir(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _empty(folder, keep=OUT_MARKER)
    (folder / OUT_MARKER).write_text(_MARKER_TEXT)


def _empty(folder: Path, keep: str) -> None:
    for entry in folder.iterdir():
        if entry.name == keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


@contextlib.contextmanager
def claim_state_dir(folder: Path, *, resume: bool) -> Iterator[None]:
    """Lock the state folder for this process; a second run is refused naming the holder's pid.

    The lock is an fcntl lock on the marker file: the kernel drops it when the process dies, even on kill -9,
    so a crashed run never blocks `--resume`.
    """
    # A folder from an earlier mge version has no marker, but its Postgres data shows mge wrote it.
    legacy = resume and (folder / "postgres" / "PG_VERSION").is_file()
    if not legacy:
        _owned_or_empty(folder, STATE_MARKER, "--state-dir")
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / STATE_MARKER, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
            raise FolderRefused(
                f"--state-dir {folder}: in use by another `mge run` (pid {holder}); wait for it to finish, "
                "stop it, or pass another --state-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def empty_state_dir(folder: Path) -> None:
    """Start over in a claimed state folder (its marker and lock stay)."""
    _empty(folder, keep=STATE_MARKER)
