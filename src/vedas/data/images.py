"""Reading images for records: one decoder for every loader, always RGB.

Images reach the loaders in four forms: a PIL image, raw bytes, a Hugging Face ``Image``
cell as stored in parquet (``{"bytes": b"...", "path": "x.png"}``), or a path string
relative to the dataset's files (M3CoT's raw JSONL writes ``data\\images\\<id>.png`` with
Windows backslashes). :class:`ImageReader` turns any of them into a fully decoded RGB
image, so a missing or corrupt file fails at load time with the file and the row named.

Conversion (:func:`to_rgb`): images with transparency (RGBA, LA, palette with a
transparent colour) are composited on white, because dropping the alpha channel turns
transparent pixels into whatever colour they happen to store, often black; 16- and 32-bit
grey images (I;16, I, F) are scaled to 8 bits, because PIL's own conversion clips every
value above 255 to white; every other mode (L, 1, P, CMYK, ...) goes through PIL's own
conversion. :func:`open_rgb` is the one way every path (``vedas eval``, ``vedas infer``,
``VedasModel.generate`` with a path, ``vedas serve``, the lmms-eval tasks) opens a file, so
the same file is the same image everywhere.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vedas.data.rows import Row

# PIL raises these for unreadable or truncated files; DecompressionBombError is not an OSError.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)
_DECODE_ERRORS = DECODE_ERRORS

# the modes PIL's convert("RGB") clips to 0..255 instead of scaling
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _grey_to_8bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit grey image as 8-bit L: I;16 scales by 255/65535; I and F by their own
    range when it exceeds 0..255 (a 16-bit PNG may open as I), else unchanged."""
    values = np.asarray(image, dtype=np.float64)
    sixteen_bit = image.mode.startswith("I;16") or values.max(initial=0) > 255
    top = 65535.0 if sixteen_bit else 255.0
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB image with the same pixels (transparency composited on white, 16-bit grey scaled)."""
    if image.mode == "RGB":
        return image.copy()
    if image.mode in _WIDE_GREY:
        return _grey_to_8bit(image).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(source: str | Path | io.BytesIO) -> Image.Image:
    """Open, fully decode and convert (:func:`to_rgb`) one image file or buffer.

    Raises one of :data:`DECODE_ERRORS` when it cannot (the caller names the input).
    """
    with Image.open(source) as image:
        image.load()
        return to_rgb(image)


def resolve(raw: str, bases: Sequence[Path]) -> Path:
    """Find a dataset-relative image path; backslashes count as separators.

    Tried in order for each base folder: ``base/raw``, then ``base/images/<file name>``
    (datasets are often unpacked flat). If nothing exists, the first candidate is
    returned so that the error names the path a user would expect.
    """
    rel = Path(raw.replace("\\", "/"))
    if rel.is_absolute():
        return rel
    candidates = [base / rel for base in bases] + [base / "images" / rel.name for base in bases]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[0] if candidates else rel


class ImageReader:
    """Decodes the images of one load; files and keyed images shared by rows decode once.

    ``bases`` are the folders relative paths are resolved against (see :func:`resolve`).
    """

    def __init__(self, bases: Sequence[Path] = ()) -> None:
        self.bases = [Path(b) for b in bases]
        self._cache: dict[Hashable, Image.Image] = {}

    def __call__(
        self, value: Any, row: Row, field: str = "image", key: Hashable | None = None
    ) -> Image.Image:
        """Decode ``value`` (see module docstring) for ``row``; ``key`` caches embedded images."""
        if key is not None and key in self._cache:
            return self._cache[key]
        if value is None:
            raise row.error("missing_image", f"field {field!r} holds no image")
        if isinstance(value, Image.Image):
            image = self._convert(value, row, f"field {field!r}")
        elif isinstance(value, (bytes, bytearray)):
            image = self._decode(bytes(value), row, f"embedded image in field {field!r}")
        elif isinstance(value, Mapping):
            data, name = value.get("bytes"), value.get("path")
            if data:
                what = (
                    f"embedded image {name!r} in field {field!r}"
                    if name
                    else f"embedded image in field {field!r}"
                )
                image = self._decode(data, row, what)
            elif name:
                image = self._file(str(name), row)
            else:
                raise row.error("missing_image", f"field {field!r} has neither bytes nor a path")
        elif isinstance(value, (str, Path)):
            image = self._file(str(value), row)
        else:
            raise row.error("bad_image", f"field {field!r} holds a {type(value).__name__}, not an image")
        if key is not None:
            self._cache[key] = image
        return image

    def _file(self, raw: str, row: Row) -> Image.Image:
        path = resolve(raw, self.bases)
        if path in self._cache:
            return self._cache[path]
        if not path.is_file():
            raise row.error("missing_image", f"image file not found: {path}")
        try:
            rgb = open_rgb(path)
        except _DECODE_ERRORS as exc:
            raise row.error("bad_image", f"cannot decode image file {path}: {exc}") from exc
        self._cache[path] = rgb
        return rgb

    def _decode(self, data: bytes, row: Row, what: str) -> Image.Image:
        try:
            return open_rgb(io.BytesIO(data))
        except _DECODE_ERRORS as exc:
            raise row.error("bad_image", f"cannot decode {what}: {exc}") from exc

    def _convert(self, image: Image.Image, row: Row, what: str) -> Image.Image:
        try:
            return to_rgb(image)
        except _DECODE_ERRORS as exc:
            raise row.error("bad_image", f"cannot convert {what} to RGB: {exc}") from exc
