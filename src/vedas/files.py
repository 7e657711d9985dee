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


def current_umask() -> int:
    """The process umask: from /proc where Linux shows it, else by setting it and putting it back (a
    moment in which another thread's new files would get mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def honour_umask(tree: Path) -> None:
    """Give ``tree`` and everything under it the modes the umask allows (dirs 0777, files 0666, masked).

    ``tempfile.mkdtemp`` makes its directory 0700 whatever the umask, and an atomic save renames
    that directory into place: without this a checkpoint is readable by its owner only, so no one
    else in a shared lab, and no server running as another user, can load it.
    """
    umask = current_umask()
    tree.chmod(0o777 & ~umask)
    for root, dirs, files in os.walk(tree):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


__all__ = ["atomic_write_text", "current_umask", "honour_umask"]
