"""Weights that rotted on disk fail at load, naming the file, instead of answering ``!!!!``.

Two checks, both reading every byte of the weights once more before the model loads them
(:func:`vedas.checkpoint.resolve` runs them; ``VEDAS_VERIFY_WEIGHTS=0`` skips them):

- :func:`check_finite`: every float tensor of a safetensors file (F64, F32, F16, BF16) holds no
  NaN or infinity, tested on the raw bits (an all-ones exponent), so no tensor is materialised;
- :func:`check_sums`: each file a vedas checkpoint lists in its ``config.yaml`` under ``sha256``
  (written by :meth:`vedas.VedasModel.save`, :func:`sums`) still has that sha256. Checkpoints
  saved before the sums were recorded have none and skip this check.

Cost: both run at disk or page-cache speed (docs/troubleshooting.md gives the measured rate).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from vedas.errors import CheckpointError

# dtype -> (unsigned view, exponent mask): a value is NaN or infinite exactly when its exponent is all ones
_FLOAT_BITS: dict[str, tuple[type, int]] = {
    "F64": (np.uint64, 0x7FF0000000000000),
    "F32": (np.uint32, 0x7F800000),
    "F16": (np.uint16, 0x7C00),
    "BF16": (np.uint16, 0x7F80),
}
_CHUNK = 1 << 24  # elements per test, to bound the temporary arrays on multi-GB tensors
_READ = 1 << 24  # bytes per hash update


# files already verified in this process, by identity and version: `vedas eval` resolves a
# checkpoint before it opens its results and again in vedas.load, and should read the weights once
_VERIFIED: set[tuple[str, str, int, int, int]] = set()


def _key(what: str, path: Path) -> tuple[str, str, int, int, int]:
    st = path.stat()
    return (what, str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)


def check_finite(path: Path, data_start: int, header: dict[str, Any]) -> None:
    """A CheckpointError naming ``path`` and the tensor when a float tensor holds NaN or infinity."""
    key = _key("finite", path)
    if key not in _VERIFIED:
        _check_finite(path, data_start, header)
        _VERIFIED.add(key)  # only once it passed: a failing file fails again


def _check_finite(path: Path, data_start: int, header: dict[str, Any]) -> None:
    if not any(isinstance(t, dict) and t.get("dtype") in _FLOAT_BITS for t in header.values()):
        return
    try:
        data = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start)
    except (OSError, ValueError) as e:  # an empty data section cannot be mapped: nothing to test
        if path.stat().st_size <= data_start:
            return
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    for name, t in header.items():
        if name == "__metadata__" or t.get("dtype") not in _FLOAT_BITS:
            continue
        view, mask = _FLOAT_BITS[t["dtype"]]
        begin, end = t["data_offsets"]
        if (end - begin) % np.dtype(view).itemsize:
            raise CheckpointError(f"{path}: corrupt safetensors file (tensor {name!r} has a partial element)")
        bits = data[begin:end].view(view)
        for start in range(0, bits.size, _CHUNK):
            if ((bits[start : start + _CHUNK] & view(mask)) == view(mask)).any():
                raise CheckpointError(
                    f"{path}: tensor {name!r} holds NaN or infinite values (corrupt weights); "
                    "restore the file from a copy"
                )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def sums(directory: Path) -> dict[str, str]:
    """The sha256 of every safetensors file under a checkpoint ``directory``, by relative path."""
    return {p.relative_to(directory).as_posix(): sha256(p) for p in sorted(directory.rglob("*.safetensors"))}


def check_sums(directory: Path, recorded: Any, config: Path) -> None:
    """Each file ``recorded`` (``config.yaml``'s ``sha256``) must exist with that sha256, else a
    CheckpointError naming it; None (a checkpoint saved before sums were recorded) checks nothing."""
    if recorded is None:
        return
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{config}: sha256 must map file names to sums, got {type(recorded).__name__}")
    for name, expected in recorded.items():
        path = directory / str(name)
        if not path.is_file():
            raise CheckpointError(f"{path} is missing ({config.name} records its sha256)")
        key = _key(f"sha256 {expected}", path)
        if key in _VERIFIED:
            continue
        if sha256(path) != expected:
            raise CheckpointError(
                f"{path}: sha256 differs from the one recorded at save in {config.name} "
                "(the file changed or rotted on disk); restore it from a copy"
            )
        _VERIFIED.add(key)


__all__ = ["check_finite", "check_sums", "sha256", "sums"]
