"""Atomic, crash-safe writes (a reader never sees a half-written artefact) and the run-folder lock.

A write goes to a temporary `.NAME.PID.XXXXXXXX[SUFFIX].part` beside its target, is fsynced, then renamed
over it. A folder is swapped in one step where the kernel can (Linux renameat2 RENAME_EXCHANGE); elsewhere
with two renames through `.NAME.old`, and a swap killed between them is undone on the next access
(`recover_dir`, which the writers and the model loaders call). Leftovers of killed runs (their PID no longer
alive on this machine) are removed by the next write to the same target.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def shown(path: str | os.PathLike) -> str:
    """`path` as text that prints anywhere: bytes of a file name that are not UTF-8 appear as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _readable(path: Path, mode: int | None = None) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; artefacts get the usual permissions."""
    if mode is None:
        mode = (0o755 if path.is_dir() else 0o644) & ~_umask()
    path.chmod(mode)


def _fsync(path: Path) -> None:
    """Flush `path` (a file, or a folder's entries) to disk: a rename is durable only after its data is."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a folder; the data itself was flushed
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _target(path: str | os.PathLike) -> Path:
    """Where a write to `path` lands: through a symlink to its target, so the link stays a link."""
    path = Path(path)
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _clean_stale(path: Path) -> None:
    """Remove the `.part` leftovers that killed writers (dead PIDs on this machine) left beside `path`."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[a-z0-9_]{{8}}.*\.part")
    with suppress(OSError):  # a read-only or vanished folder: nothing to clean
        for item in path.parent.iterdir():
            m = pattern.fullmatch(item.name)
            if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def recover_dir(path: str | os.PathLike) -> None:
    """Undo a folder swap that was killed between its two renames: `path` gone, `.NAME.old` still there.

    Readers call this before loading; it never raises (a read-only place is left as it is)."""
    path = _target(path)
    old = path.with_name(f".{path.name}.old")
    with suppress(OSError):
        if old.is_dir() and not path.exists():
            os.rename(old, path)
            _fsync(path.parent)
        elif old.is_dir() and path.is_dir():  # killed after the swap, before the old copy was removed
            shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error delete it."""
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_prefix(path), suffix=suffix + ".part")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _readable(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_file() else None)
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_outputs(folder: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging folder inside `folder`; on success move each file written there into `folder`, one
    rename each once all of them are written, so a run killed while computing or writing its outputs leaves
    the previous run's set as it was (the moves take microseconds, not the seconds a plot takes). On error,
    and after, the staging folder goes; a killed run's is cleaned by the next."""
    folder = _target(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = folder / "outputs"  # the staging folders' name pattern, for _clean_stale
    _clean_stale(name)
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=_prefix(name), suffix=".part"))
    try:
        yield stage
        for item in sorted(stage.iterdir()):
            os.replace(item, folder / item.name)
        _fsync(folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing entries in one atomic step (Linux renameat2); False where that is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # glibc < 2.28, musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # the filesystem cannot
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_in(tmp: Path, path: Path) -> None:
    """Put the folder `tmp` at `path`; the old folder ends up at `tmp` (removed by the caller) or is removed."""
    if _exchange(tmp, path):
        return
    # two renames: killed between them, `path` is missing and `.NAME.old` holds it (recover_dir restores it)
    old = path.with_name(f".{path.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` whole.

    A symlinked `path` stays a link (its target is replaced); the folder keeps its permissions."""
    path = _target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    _clean_stale(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_prefix(path), suffix=".part"))
    try:
        yield tmp
        for item in sorted(tmp.rglob("*"), reverse=True):  # files before their folders
            if not item.is_symlink():  # chmod would reach through a link to its target
                _readable(item)
                _fsync(item)
        _readable(tmp, stat.S_IMODE(path.stat().st_mode) if path.is_dir() else None)
        _fsync(tmp)
        if path.exists():
            _swap_in(tmp, path)
        else:
            os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def run_lock(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold `folder/.lock` (created if need be) for the duration, so two runs cannot write one folder.

    Non-blocking: if another process holds it, raise ValueError naming the folder and that process's PID.
    The lock (fcntl.flock) dies with its process, so a killed run never leaves the folder locked."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{folder} is in use by another daisy run (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield lock
    finally:
        os.close(fd)  # closing releases the lock


def carry_over(old: Path, new: Path, owned: set[str]) -> None:
    """Copy into `new` what the folder `old` holds beyond the names its writer `owned` (a model card, notes):
    rewriting a folder in place must not lose them. Owned names left out of `new` stay gone."""
    if not old.is_dir():
        return
    for item in old.iterdir():
        if item.name in owned or (new / item.name).exists() or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, new / item.name)
        else:
            shutil.copy2(item, new / item.name)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return Path(path)
