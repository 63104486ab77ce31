"""Crash-safe output: every stage writes to a temporary sibling, flushes it to disk, then swaps it in.

A kill (or power loss) at any instant leaves, for the next run, either the old output or the new one complete:

- ``atomic_path``: the file is written beside the target, fsynced, renamed over it (one atomic rename), and the
  folder is fsynced;
- ``atomic_dir``: the folder is written beside the target and fsynced (every file, then the folder); the swap is
  two renames (target -> ``.<name>.old``, new -> target) and the parent is fsynced after each. A kill between
  the two leaves no target but a complete ``.<name>.old``, which ``recover`` (called before every write) renames
  back; a leftover ``.old`` beside a target is removed;
- temporary files and folders carry the writing process's id and host (``.<name>.<pid>@<host>.<random>.tmp``):
  those of a dead process of this host are removed by the next write beside them (a process on another host
  sharing the folder is never judged by a local pid);
- a folder to delete (a replaced output, a ``.old``) is first renamed to such a temporary name, so that a kill
  in the middle of deleting it leaves nothing that could be taken for an output.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from pipeline.errors import OutputError


def _fsync_path(path: Path) -> None:
    """Flush a file or a folder entry list to disk (folders: where the platform allows it)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() and hasattr(os, "O_DIRECTORY") else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems cannot fsync a folder
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.EISDIR, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under ``root``, then every folder, deepest first, then ``root`` itself."""
    if root.is_file():
        _fsync_path(root)
        return
    folders = []
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_path(Path(folder) / name)
        folders.append(Path(folder))
    for folder in reversed(folders):
        _fsync_path(folder)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _discard(path: Path, target: Path) -> None:
    """Delete ``path`` (``target``'s ``.old``), first renamed to a temporary of ``target``: a kill mid-way leaves a
    temporary that ``recover(target)`` removes, never a partial ``.old`` that it could restore."""
    if not path.exists():
        return
    doomed = path.parent / f"{_tmp_prefix(target)}{secrets.token_hex(4)}.tmp"
    os.replace(path, doomed)
    _remove(doomed)


def recover(target: str | os.PathLike) -> None:
    """Put ``target`` back in a complete state after a killed write: a ``.old`` copy comes back when the target
    is missing (a kill inside ``atomic_dir``'s swap) and is removed otherwise; temporary siblings of processes
    that are no longer running are removed."""
    target = Path(target)
    parent = target.parent
    if not parent.is_dir():
        return
    old = parent / f".{target.name}.old"
    if old.exists():
        if target.exists():
            _discard(old, target)
        else:
            os.replace(old, target)
            _fsync_path(parent)
    # exactly ".<name>.<pid>@<host>.<random>.tmp": not the temporaries of a sibling named "<name>.<digits>"
    ours = re.compile(re.escape(f".{target.name}.") + r"(\d+)@" + re.escape(HOST) + r"\.[A-Za-z0-9_]+\.tmp")
    for tmp in parent.glob(f"{glob.escape(f'.{target.name}.')}*.tmp"):
        match = ours.fullmatch(tmp.name)
        if match and not _alive(int(match.group(1))):
            _remove(tmp)


NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def _disk_full_is_an_error(target: Path) -> Iterator[None]:
    """A full disk while writing ``target`` becomes one clear ``OutputError`` (the caller leaves the old output)."""
    try:
        yield
    except OSError as err:
        if isinstance(err, OutputError) or not (err.errno in NO_SPACE or "No space left" in str(err)):
            raise
        raise OutputError(f"{target}: no space left on the device while writing it; the previous output is intact "
                          "(free some space and run again)") from err


def _tmp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}@{HOST}."


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; once the block succeeds it is fsynced and renamed onto ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(0o644)  # mkstemp makes it private; outputs are ordinary files
    try:
        with _disk_full_is_an_error(target):
            yield tmp_path
            _fsync_path(tmp_path)
        os.replace(tmp_path, target)
        _fsync_path(target.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; once the block succeeds it is fsynced and replaces ``path``
    (see the module docstring for what a kill at any instant leaves)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover(target)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; outputs are ordinary folders
    try:
        with _disk_full_is_an_error(target):
            yield tmp
            fsync_tree(tmp)
        swap_in(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def swap_in(new: Path, target: Path) -> None:
    """Replace folder ``target`` by the complete folder ``new`` (same parent): the old one is renamed aside, the
    new one renamed in, the old one removed; the parent is fsynced after each rename."""
    parent = target.parent
    if target.exists():
        old = parent / f".{target.name}.old"
        _discard(old, target)
        os.replace(target, old)
        _fsync_path(parent)
        _crash_point("atomic_dir.between_renames")
        os.replace(new, target)
        _fsync_path(parent)
        _discard(old, target)
    else:
        os.replace(new, target)
        _fsync_path(parent)


def _crash_point(name: str) -> None:
    """Tests only: ``REFICR_CRASH_AT=<name>`` kills this process here (SIGKILL), as a power cut would."""
    if os.environ.get("REFICR_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically, keys in insertion order, UTF-8, trailing newline."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_parquet(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """Write a DataFrame to parquet atomically (no index, deterministic bytes for equal frames)."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
