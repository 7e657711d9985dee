"""Where a request's images come from, and how much memory decoding one may take.

    policy = MediaPolicy(allowed_dir=None, max_pixels=802_816, keep_pixels=50_176, max_file_bytes=32 << 20)
    image = policy.load(url, "messages[0].content[1].image_url.url")   # a PIL RGB image, or ApiError 400

- ``data:`` URLs (base64) are always accepted. Local files (``file://`` URLs, absolute paths)
  only when the operator named a directory (``--allowed-local-media-path``, vLLM's flag), and
  then only regular files whose resolved path lies under it: a symlink or ``..`` that leads
  out, a FIFO, a device or a directory is refused. A refused path and a missing one get the
  same message, so a client cannot probe which files exist.
- The image header is read first and an image over ``max_pixels`` is refused before its pixels
  are decoded. A large JPEG is decoded reduced (``draft``); any image still over 4 × what the
  processor keeps (``keep_pixels``) is reduced by an integer factor right after decoding, so a
  queued request holds at most that much, never the full decoded image.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from vedas.data.images import to_rgb
from vedas.serve.errors import bad

NOT_ALLOWED = "local file not allowed or not found"
_REDUCIBLE = ("L", "LA", "RGB", "RGBA")  # modes PIL's reduce() takes


@dataclass(frozen=True)
class MediaPolicy:
    """What an ``image_url`` may point at and how large its image may be."""

    allowed_dir: Path | None = None  # resolved; None: no local files at all
    max_pixels: int = 802_816  # header width × height above this: refused before decoding
    keep_pixels: int = 50_176  # the processor's pixel budget: decoding reduces towards it
    max_file_bytes: int = 32 * 2**20
    min_side: int = 28  # one merged patch: the engine refuses smaller images
    max_aspect: float = 200.0  # the processor refuses wider ones

    def load(self, url: object, param: str) -> Image.Image:
        """An ``image_url.url`` as an RGB image within the bounds; ApiError 400 naming ``param`` otherwise."""
        if not isinstance(url, str) or not url:
            raise bad(param, f"must be a data URL or a local file path, got {url!r}")
        if url.startswith("data:"):
            return self.decode(_data_url_bytes(url, param), param, "the data URL")
        return self.decode(self._read_local(url, param), param, "the file")

    def _read_local(self, url: str, param: str) -> bytes:
        parsed = urlparse(url)
        if parsed.scheme not in ("", "file"):
            raise bad(param, f"{parsed.scheme}:// images are not fetched; send a data URL")
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise bad(param, f"a file:// URL names no host, got {parsed.netloc!r}")
        path = unquote(parsed.path) if parsed.scheme == "file" else url
        if self.allowed_dir is None:
            raise bad(
                param, "local files are not served (the server runs without --allowed-local-media-path)"
            )
        if not os.path.isabs(path):
            raise bad(param, f"a local image path must be absolute, got {path!r}")
        # realpath follows every symlink and '..': the check is on where the file really is
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(self.allowed_dir):
            raise bad(param, NOT_ALLOWED)
        try:
            # O_NONBLOCK: opening a FIFO with no writer must not wait; O_NOFOLLOW: no swap after realpath
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        except OSError:
            raise bad(param, NOT_ALLOWED) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # FIFOs, devices, directories: never read
                raise bad(param, NOT_ALLOWED)
            if st.st_size > self.max_file_bytes:
                raise bad(param, f"the file is {st.st_size} bytes, over the limit of {self.max_file_bytes}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read(self.max_file_bytes + 1)
        finally:
            os.close(fd)

    def decode(self, raw: bytes, param: str, what: str) -> Image.Image:
        """Decode ``raw``: header checked first, decoded no larger than the processor needs.

        One copy of the full decoded image at most: no ``with`` (closing an image frees its
        pixels) and no copy; the reduction happens before any mode conversion where it can.
        """
        try:
            image = Image.open(io.BytesIO(raw))
            w, h = image.size
            self._check_size(w, h, param)
            if w * h > 4 * self.keep_pixels and image.format == "JPEG":
                # JPEG decodes at 1/2, 1/4 or 1/8 scale: never hold the full image
                image.draft("RGB", _target(w, h, 4 * self.keep_pixels))
            image.load()
            factor = math.isqrt(image.width * image.height // (4 * self.keep_pixels))
            if factor >= 2:  # still far over what the processor keeps: the queue holds the reduced copy
                if image.mode not in _REDUCIBLE:
                    image = to_rgb(image)
                image = image.reduce(factor)
            # every path's rule (vedas.data.images.to_rgb): transparency on white, 16-bit grey scaled
            return image if image.mode == "RGB" else to_rgb(image)
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
            raise bad(param, f"cannot read an image from {what}: {e}") from None

    def _check_size(self, w: int, h: int, param: str) -> None:
        if w * h > self.max_pixels:
            raise bad(param, f"{w}×{h} px is over the limit of {self.max_pixels} pixels (--max-image-pixels)")
        if min(w, h) < self.min_side:
            side = self.min_side
            raise bad(param, f"{w}×{h} px is smaller than one merged patch ({side}×{side} px)")
        if max(w, h) / min(w, h) > self.max_aspect:
            raise bad(
                param,
                f"{w}×{h} px has an aspect ratio of {max(w, h) / min(w, h):.0f}, over the image processor's "
                f"limit of {self.max_aspect:.0f}",
            )


def _target(w: int, h: int, pixels: int) -> tuple[int, int]:
    scale = math.sqrt(pixels / (w * h))
    return max(1, int(w * scale)), max(1, int(h * scale))


def _data_url_bytes(url: str, param: str) -> bytes:
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise bad(param, "a data URL must be base64: data:image/<type>;base64,<data>")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise bad(param, f"bad base64 in the data URL: {e}") from None
