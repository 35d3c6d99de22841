"""Creating files inside the output tree without following anything planted there.

* Temporary names start with a dot: `.{final name}.tmp-{pid}-{random}`. A sample id never starts with a dot
  (cosmos_dist/io/prompts.py), so no temporary name can equal a final name or be mistaken for one, whatever
  the id contains (`a.tmp-1` is a legal id), and `is_temp_name` recognises every one of them.
* `open_new` creates with `O_CREAT | O_EXCL | O_NOFOLLOW`: an existing file or a symlink at the name is an
  error, never something we write through.
* `refuse_symlink` gives the one-line refusal for a run file (manifest, marker) that is a symlink.
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cosmos_dist.errors import ConfigError

TEMP_MARK = ".tmp-"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class UnsafePathError(ConfigError):
    """A file the run writes is a symlink or not a regular file; the message names it."""


def temp_path_for(path: str | os.PathLike, suffix: str = "") -> Path:
    """A fresh temporary name next to `path`: `.{name}.tmp-{pid}-{8 hex}{suffix}` (hidden, unique)."""
    p = Path(path)
    return p.with_name(f".{p.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def is_temp_name(name: str) -> bool:
    """True for the names `temp_path_for` makes (and the older `.{name}.tmp-{pid}` latent temporaries)."""
    return name.startswith(".") and TEMP_MARK in name


def open_new(path: str | os.PathLike, mode: int = 0o644) -> int:
    """A write descriptor on a file that did not exist (never a symlink's target). Raises FileExistsError."""
    return os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode)


def create_temp(path: str | os.PathLike, suffix: str = "") -> tuple[Path, int]:
    """Reserve a temporary name next to `path` (exclusive create): (temp path, open write descriptor)."""
    for _ in range(16):
        tmp = temp_path_for(path, suffix)
        try:
            return tmp, open_new(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to {path}")


def refuse_symlink(path: str | os.PathLike, what: str) -> None:
    """Raise UnsafePathError when `path` exists as a symlink or as something other than a regular file."""
    _refuse_link_or_other(path, what, stat.S_ISREG, "a regular file")


def refuse_symlinked_dir(path: str | os.PathLike, what: str) -> None:
    """Raise UnsafePathError when the folder `path` exists as a symlink or a non-folder."""
    _refuse_link_or_other(path, what, stat.S_ISDIR, "a folder")


def _refuse_link_or_other(path: str | os.PathLike, what: str, is_expected, expected: str) -> None:
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(
            f"{what} {p} is a symlink (to {os.readlink(p)}); the run writes only inside its output folder: "
            f"remove the link or choose another output_dir"
        )
    if not is_expected(st.st_mode):
        raise UnsafePathError(f"{what} {p} is not {expected}; remove it or choose another output_dir")


def unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so a rename in it is durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(os.fspath(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (short writes happen on full disks and some filesystems)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """`data` to an exclusive temporary next to `path`, fsync, rename over `path` (a symlink at `path` is
    replaced, never followed). On any failure (a full disk...) the temporary is removed and the error raised."""
    return save_atomic(path, lambda f: f.write(data))  # a buffered file's write() loops over short writes


def save_atomic(path: str | os.PathLike, write) -> Path:
    """`write(binary file object)` into an exclusive temporary next to `path`, then fsync and rename over `path`
    (e.g. `save_atomic(p, lambda f: torch.save(t, f))`). On any failure the temporary is removed."""
    path = Path(path)
    tmp, fd = create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)
    return path
