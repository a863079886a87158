"""Files written whole or not at all: through a temporary file in the same folder, moved into place at the end."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write ``path``'s content into (text: UTF-8, newlines as written); it replaces ``path`` only when the
    block ends without an error, with the permissions a plain ``open`` would give. On an error nothing is left behind:
    never a half-written file, never a stray temporary one."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # named by the file asked for, not by the temporary one (a read-only folder, /proc)
        raise OSError(exc.errno, f"{path}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, mode) if "b" in mode else os.fdopen(fd, mode, newline="", encoding="utf-8") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_out(out: Path | str | None, force: bool = False, expected: str = "a CSV file name") -> None:
    """Refuse, before any work, an ``--out`` file the command would destroy or could write only to fail: an existing
    file unless ``force`` (``--force``), a folder, a name ending with ``/`` (``--out new/`` wrote a file named
    ``new``), anything but a regular file (``/dev/null`` would be replaced), a path under a file, a folder nothing can
    be written in (read-only, ``/proc``: found after the work, before). ``expected``: what ``--out`` should name, for
    the messages."""
    if out is None or str(out) == "":
        return
    if isinstance(out, str) and out.endswith(tuple(filter(None, (os.sep, os.altsep)))):  # Path() would drop it
        raise ValueError(f"--out {out} ends with {out[-1]!r}, as a folder does: expected {expected}")
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"--out {path} is a folder: expected {expected}")
    if path.exists() and not path.is_file():
        raise ValueError(f"--out {path} is not a regular file: expected {expected}")
    if path.exists() and not force:
        raise ValueError(f"--out {path} exists: pass --force to overwrite it")
    above = next((folder for folder in path.parents if folder.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"--out {path}: {above} is a file: expected a folder there")
    if above is not None:  # where the file (or the folders above it) will be made: a file made there and removed
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=above)
        except OSError as exc:
            raise ValueError(f"--out {path}: nothing can be written in {above} ({exc.strerror}): expected {expected} "
                             "in a folder this user can write to") from None  # fmt: skip
        os.close(fd)
        os.unlink(probe)


def new_folder(root: Path, name: str) -> Path:
    """``root / name`` made now, or ``name-1``, ``name-2``, ... when it exists: ``mkdir`` fails on an existing folder,
    so two processes asking at once (runs started in the same second) never get the same one."""
    for i in range(1000):
        folder = Path(root) / (name + (f"-{i}" if i else ""))
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise RuntimeError(f"could not make a new run folder for {name} under {root}")
