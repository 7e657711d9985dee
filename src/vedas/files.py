"""Writing a file so that a reader (or a run killed half-way) never sees half of it."""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def honour_umask(tree: Path) -> None:
    """Give ``tree`` and everything under it the modes the umask allows (dirs 0777, files 0666, masked).

    ``tempfile.mkdtemp`` makes its directory 0700 whatever the umask, and an atomic save renames
    that directory into place: without this a checkpoint is readable by its owner only, so no one
    else in a shared lab, and no server running as another user, can load it.
    """
    umask = os.umask(0)
    os.umask(umask)  # reading the umask means setting it; it is put back at once
    tree.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(tree):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


__all__ = ["atomic_write_text", "honour_umask"]
