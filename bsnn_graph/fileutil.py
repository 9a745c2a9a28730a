"""Safe output files: write to a temporary name beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import BsnnError

__all__ = ["atomic_output", "check_output_path"]


def check_output_path(path: str | os.PathLike, overwrite: bool, error: type[BsnnError] = BsnnError) -> Path:
    """Refuse an output ``path`` before any work: an existing file (without
    ``overwrite``), a folder, or a parent folder that does not exist."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise error(f"{path}: is a folder, not a file name")
    if path.exists() and not overwrite:
        raise error(f"{path}: file exists (use --overwrite to replace it)")
    if not folder.is_dir():
        raise error(f"{path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise error(f"{path}: folder {folder} is not writable")
    return path


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = True):
    """Yield a temporary path in the target's folder; on success rename it to ``path``.

    If the body raises, the temporary file is removed and an existing ``path``
    is left untouched. With ``overwrite=False`` an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise BsnnError(f"{path}: file exists (use --overwrite to replace it)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise BsnnError(f"{path}: folder {folder} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    umask = os.umask(0o022)  # mkstemp makes 0600; give the file the permissions a new file gets
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
