"""Files Vigil writes (the store, recordings), created so that nobody else
can read them or steer the write elsewhere.

Vigil runs as root and its output paths may sit in directories other users
can write to.  A name planted there beforehand (a symlink to /etc/shadow, a
hard link to a root-owned file, a FIFO, /dev/null) must not be followed or
written through: a new file is created with O_CREAT|O_EXCL|O_NOFOLLOW and
mode 0600; an existing one must be a plain file of ours with a single link,
opened with O_NOFOLLOW and checked again on the open descriptor (so a swap
between the check and the open is caught too).  Symlinks in the directories
above the final name are the directory owner's business and are followed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from .errors import ConfigError

log = logging.getLogger("vigil.files")

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def check_existing(path: str, st: os.stat_result) -> None:
    """Refuse what Vigil must not write through: not a plain file, a file
    with other names (a hard link planted by someone), or someone else's."""
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(f"{path}: is a symbolic link; refusing to write through it")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file; refusing to write to it")
    if st.st_nlink > 1:
        raise ConfigError(f"{path}: has {st.st_nlink} hard links; refusing to write to it")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{path}: owned by uid {st.st_uid}, not by us; refusing to write to it")


def tighten(path: str, st: os.stat_result, fd: int | None = None, mode: int = PRIVATE_FILE) -> None:
    """Drop group and other permissions from an existing file or directory,
    saying so: it was readable by users who must not read it."""
    if stat.S_IMODE(st.st_mode) & 0o077:
        log.warning(
            "%s was mode %04o (readable by others); now %04o", path, stat.S_IMODE(st.st_mode), mode
        )
        if fd is not None:
            os.fchmod(fd, mode)
        else:
            os.chmod(path, mode, follow_symlinks=False)


def open_private(
    path: str, *, truncate: bool = False, create: bool = True, tighten_existing: bool = True
) -> int:
    """A descriptor open for writing on `path`, a regular file only we can
    read: created 0600 if absent, refused if it is a symlink, a special
    file, hard-linked or someone else's; tightened to 0600 if it was looser.
    Raises ConfigError with a one-line reason."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    for _ in range(3):  # a name that appears or vanishes under us: look again
        if create:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            except FileExistsError:
                pass
            except OSError as err:
                raise ConfigError(f"cannot write {path}: {err.strerror}") from err
            else:
                os.set_blocking(fd, True)
                return fd
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            if create:
                continue
            raise ConfigError(f"{path}: no such file") from None
        except OSError as err:
            raise ConfigError(f"cannot write {path}: {err.strerror}") from err
        check_existing(path, st)  # a FIFO is refused here, before an open could block on it
        try:
            fd = os.open(path, flags | (os.O_TRUNC if truncate else 0))
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno == errno.ELOOP:
                raise ConfigError(
                    f"{path}: is a symbolic link; refusing to write through it"
                ) from err
            raise ConfigError(f"cannot write {path}: {err.strerror}") from err
        try:
            st = os.fstat(fd)
            check_existing(path, st)  # what we opened, not what we looked at
            if tighten_existing:
                tighten(path, st, fd)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise ConfigError(f"cannot write {path}: it keeps changing under us")


def open_output(path: str, buffering: int = -1):
    """A binary file object for a new output (a recording): see open_private."""
    return os.fdopen(open_private(path, truncate=True), "wb", buffering=buffering)


def private_dir(path: str, *, tighten_existing: bool) -> None:
    """Make `path` (and missing parents) 0700; an existing directory is
    tightened only when it is Vigil's own (`tighten_existing`): never chmod
    a shared directory such as /tmp."""
    try:
        os.makedirs(path, mode=PRIVATE_DIR, exist_ok=True)
        st = os.stat(path)
    except OSError as err:
        raise ConfigError(f"cannot create {path}: {err.strerror}") from err
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path}: not a directory")
    if tighten_existing and st.st_uid == os.geteuid():
        tighten(path, st, mode=PRIVATE_DIR)
