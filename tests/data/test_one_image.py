"""One image everywhere: every path that opens an image file gives the same RGB pixels.

``vedas eval`` (the loaders' :class:`~vedas.data.images.ImageReader`), ``vedas infer`` and
``VedasModel.generate(path)`` (:func:`vedas.model.open_image`), ``vedas serve`` (a data URL or a
local path) and the lmms-eval tasks (:func:`~vedas.data.images.to_rgb`) used to disagree on
transparency (black on some, white on others), and a 16-bit grey PNG came out 99.6 % white.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vedas.data.images import ImageReader, to_rgb
from vedas.data.rows import Row
from vedas.model import open_image
from vedas.serve.media import MediaPolicy


def _rgba(path: Path) -> Path:
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent black on the left half
    image.paste((200, 10, 10, 255), (16, 0, 32, 32))  # opaque red on the right half
    image.save(path)
    return path


def _grey16(path: Path) -> Path:
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(path)  # a 16-bit grey PNG
    return path


def _every_path(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    row = Row({"id": "r"}, source="test", where="row 0")
    serve = MediaPolicy(allowed_dir=path.parent.resolve(), min_side=1)
    with Image.open(path) as f:
        f.load()
        lmms = to_rgb(f)  # what the lmms-eval tasks do with doc_to_visual's PIL image
    with Image.open(io.BytesIO(raw)) as f:
        f.load()
        pil = f.copy()  # generate() given an unconverted PIL image
    images = {
        "eval (file)": ImageReader()(str(path), row),
        "eval (embedded bytes)": ImageReader()({"bytes": raw, "path": path.name}, row),
        "infer / generate(path)": open_image(path, "--image"),
        "generate(PIL)": open_image(pil, "images[0]"),
        "serve (local path)": serve.load(str(path), "messages[0]"),
        "lmms-eval": lmms,
    }
    url = "data:image/png;base64," + base64.b64encode(raw).decode()  # the file's own bytes
    images["serve (data URL)"] = serve.load(url, "messages[0]")
    for name, image in images.items():
        assert image.mode == "RGB", name
    return {name: np.asarray(image) for name, image in images.items()}


def test_rgba_is_white_behind_on_every_path(tmp_path: Path) -> None:
    arrays = _every_path(_rgba(tmp_path / "rgba.png"))
    for name, array in arrays.items():
        assert tuple(array[0, 0]) == (255, 255, 255), f"{name}: transparency not on white"
        assert tuple(array[0, 31]) == (200, 10, 10), name
        np.testing.assert_array_equal(array, arrays["eval (file)"], err_msg=name)


def test_16bit_grey_is_scaled_not_clipped_on_every_path(tmp_path: Path) -> None:
    path = _grey16(tmp_path / "grey16.png")
    with Image.open(path) as f:
        assert f.mode.startswith("I")  # the case PIL's convert("RGB") clips
    arrays = _every_path(path)
    for name, array in arrays.items():
        row = array[0, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255, name
        assert (np.diff(row) >= 0).all(), f"{name}: the ramp is not monotone"
        white = float((array == 255).all(axis=-1).mean())
        assert white < 0.1, f"{name}: {white:.1%} of the pixels are white (clipped)"
        np.testing.assert_array_equal(array, arrays["eval (file)"], err_msg=name)


@pytest.mark.parametrize("mode", ["I", "F"])
def test_8bit_range_in_wide_modes_is_kept(mode: str) -> None:
    image = Image.fromarray(np.full((4, 4), 100, dtype=np.int32 if mode == "I" else np.float32))
    assert image.mode == mode
    assert tuple(np.asarray(to_rgb(image))[0, 0]) == (100, 100, 100)
