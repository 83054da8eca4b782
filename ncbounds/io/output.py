"""Writing output files safely: the one atomic writer of ncbounds.

Every file ncbounds writes — ``-o FILE`` of ``report``, ``export``, ``correlate``, ``plot`` and the
records of ``batch`` and ``merge`` — goes through :func:`write_atomic`:

* the data go to a temporary file in the folder of the final file (:data:`TMP_SUFFIX`, a name no result
  record can have: records end in ``.json``), are flushed and ``fsync``-ed, then ``os.replace`` puts
  the file in place in one step. A reader never sees half a file, and a failure (full disk, missing
  permission, read-only file system, an interrupt) leaves neither a temporary file nor a 0-byte file
  behind and the old file, if any, untouched;
* an existing regular file is replaced and keeps its permission bits;
* a **symbolic link** is written *through*: the file it points to is replaced (atomically, in that
  file's folder) and the link stays a link;
* an existing **directory**, **device node**, **FIFO** or **socket** (after following links) is
  refused with one sentence (:class:`~ncbounds.errors.UsageError`) and left as it is: ``-o /dev/full``
  or ``-o /dev/null`` never turns a device into a regular file, even as root;
* any ``OSError`` on the way becomes one :class:`~ncbounds.errors.NCBoundsError` sentence naming the
  path and the cause (``ENOSPC``: no space left; ``EACCES``/``EPERM``: no permission; ``EROFS``:
  read-only file system), exit code 1.

``-`` as a path means standard output; that is the command line's business (see ``cli/common.py``),
this module only writes files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from pathlib import Path

from ncbounds.errors import NCBoundsError, UsageError

__all__ = ["TMP_SUFFIX", "check_output_path", "is_temporary_name", "save_torch", "temporary_target", "write_atomic"]

#: Suffix of every temporary file ncbounds writes (``.NAME.PID.HEX.ncbounds-tmp``).
TMP_SUFFIX = ".ncbounds-tmp"

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
)

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.ENOENT: "a folder on the way does not exist",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EISDIR: "it is a directory",
    errno.ENAMETOOLONG: "the name is too long",
}


#: ``.TARGET.PID.HEX.ncbounds-tmp`` (this version) or ``.TARGET.PID.HEX.tmp`` (versions before 0.2)
_TMP_NAME = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)\.(?P<hex>[0-9a-f]{8})(?:%s|\.tmp)\Z" % re.escape(TMP_SUFFIX), re.DOTALL)


def temporary_target(name: str) -> str | None:
    """The name of the file a temporary file of :func:`write_atomic` was going to become, or None for
    any other name (also recognises the ``….tmp`` form written by earlier versions)."""
    match = _TMP_NAME.match(name)
    return None if match is None else match.group("target")


def is_temporary_name(name: str) -> bool:
    """True for the name of a temporary file written by :func:`write_atomic` (this or an earlier version)."""
    return name.endswith(TMP_SUFFIX) or temporary_target(name) is not None


def _kind(mode: int) -> str | None:
    for test, what in _KINDS:
        if test(mode):
            return what
    return None


def check_output_path(path: str | os.PathLike) -> Path:
    """The file that writing to ``path`` would replace (links followed); refuses what must not be replaced.

    Raises :class:`UsageError` when ``path`` (or the file a symbolic link points to) is a directory,
    a device node, a FIFO or a socket. A missing file is fine (it will be created); so is a dangling
    symbolic link (its target will be created).
    """
    given = Path(path)
    target = Path(os.path.realpath(given))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise NCBoundsError(f"cannot write {given}: {_cause(exc)}; choose another output path.") from None
    what = _kind(mode)
    if what is not None:
        via = f" (the symbolic link points to {target})" if given.is_symlink() else ""
        raise UsageError(f"{given} is {what}{via}, which ncbounds never replaces; give the path of a regular file.")
    return target


def _cause(exc: OSError) -> str:
    return _CAUSES.get(exc.errno, exc.strerror or type(exc).__name__)


def write_atomic(path: str | os.PathLike, data: str | bytes, *, make_parents: bool = True) -> Path:
    """Write ``data`` (text is written as UTF-8) to ``path`` atomically; returns the file written.

    See the module docstring for the rules (symbolic links written through, directories and device
    nodes refused, nothing left behind on failure). ``make_parents`` creates missing parent folders.
    """
    given = Path(path)
    target = check_output_path(given)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    folder = target.parent
    if make_parents:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NCBoundsError(f"cannot create the folder {folder} for {given}: {_cause(exc)}; choose another output path.") from None
    tmp = folder / f".{target.name[:200]}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    try:
        old_mode = stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        old_mode = None
    fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
        view = memoryview(payload)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        os.close(fd)
        fd = None
        if old_mode is not None:
            os.chmod(tmp, old_mode)
        os.replace(tmp, target)
    except BaseException as exc:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise NCBoundsError(f"cannot write {given}: {_cause(exc)}; nothing was written (free space or choose another path).") from None
        raise
    return target


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` through :func:`write_atomic` (the demos write their checkpoints this way)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())
