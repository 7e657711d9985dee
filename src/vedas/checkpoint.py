"""Where a checkpoint is and whether its files are whole, decided before any model is allocated.

    from vedas.checkpoint import resolve
    ck = resolve("runs/t2")          # a run directory -> its final/ checkpoint
    ck.kind, ck.path                 # "vedas", Path("runs/t2/final")

:func:`vedas.load` calls :func:`resolve` first. What it accepts:

- a **vedas checkpoint** (``config.yaml`` + ``model/``), a **run directory** of ``vedas train``
  (its ``final/``), a **training checkpoint** ``checkpoints/step-N`` (its ``model.yaml`` says how it
  loads: whole weights in ``model/``, or a base model plus ``delta.safetensors``), or a **Hugging Face directory** (``config.json``);
- a **hub id** such as ``Qwen/Qwen2-VL-2B-Instruct``, only when no such local path exists and the
  text does not look like one (``./x``, ``/x``, ``a/b/c``, or a first component that exists here,
  as in ``runs/t2``): a local path is never sent to the hub.

Every missing or corrupt file (``config.yaml``, ``model/config.json``, a truncated or garbled
safetensors file or shard, a header of the wrong shape, the tokenizer) is a
:class:`~vedas.errors.CheckpointError` naming the file. Every float tensor is checked finite and a
vedas checkpoint's files against the sha256 sums its ``config.yaml`` records
(:mod:`vedas.integrity`); ``VEDAS_VERIFY_WEIGHTS=0`` skips both reads of the weights. A hub id is checked once: with ``HF_HUB_OFFLINE`` set and the id not cached, or with the hub
unreachable, it fails at once with a hint instead of retrying the network.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from vedas.errors import CheckpointError

CONFIG_FILE = "config.yaml"
WEIGHTS_DIR = "model"
STEP_MODEL_FILE = "model.yaml"
"""A ``step-N``'s description as a model (beside the training state): arch, base, latent, extras, trained."""
DELTA_FILE = "delta.safetensors"
"""A ``step-N`` of a run on a named base: the weights training changed (LoRA merged), in the base's names."""
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")

Kind = Literal["vedas", "train_step", "hf", "hub"]


@dataclass
class Checkpoint:
    """A resolved checkpoint: what kind it is and where (a directory, or a hub id for ``hub``)."""

    kind: Kind
    path: Path | str
    meta: dict[str, Any]
    """A vedas checkpoint's ``config.yaml`` (empty for the other kinds)."""

    @property
    def weights(self) -> str:
        """What ``from_pretrained`` reads: ``model/`` of a vedas checkpoint, else the path or hub id."""
        return str(Path(self.path) / WEIGHTS_DIR) if self.kind == "vedas" else str(self.path)


_TENSOR_KEYS = ("dtype", "shape", "data_offsets")


def _check_header(path: Path, header: Any, n: int) -> int:
    """The data size a parsed safetensors header promises; a CheckpointError naming ``path`` if the
    header is JSON of the wrong shape (not a mapping, a tensor without dtype/shape/data_offsets)."""
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not a mapping)"
        )
    end = 0
    for name, t in header.items():
        if name == "__metadata__":
            continue
        offsets = t.get("data_offsets") if isinstance(t, dict) else None
        if (
            not isinstance(t, dict)
            or any(k not in t for k in _TENSOR_KEYS)
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise CheckpointError(
                f"{path}: corrupt safetensors header (tensor {name!r} lacks a valid dtype, shape or data_offsets)"
            )
        end = max(end, offsets[1])
    return end


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    """A whole safetensors file's header length and header; a CheckpointError naming ``path`` otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise CheckpointError(
                    f"{path}: truncated safetensors file (header of {n} bytes, file {size})"
                )
            header = json.loads(f.read(n))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: corrupt safetensors file (its header is not JSON)") from None
    need = 8 + n + _check_header(path, header, n)
    if size < need:
        raise CheckpointError(f"{path}: truncated safetensors file ({size} of {need} bytes)")
    return n, header


def check_safetensors(path: Path) -> None:
    """Raise a CheckpointError naming ``path`` unless it is a whole safetensors file (header and data),
    and, unless ``VEDAS_VERIFY_WEIGHTS=0``, its float tensors are finite (:func:`vedas.integrity.check_finite`)."""
    n, header = read_header(path)
    if verify_enabled():
        from vedas.integrity import check_finite

        check_finite(path, 8 + n, header)


def verify_enabled() -> bool:
    """Whether loads read every weight byte (finiteness, checksums): on unless ``VEDAS_VERIFY_WEIGHTS=0``."""
    return os.environ.get("VEDAS_VERIFY_WEIGHTS", "1") != "0"


def untrained_latents(trained: Any, mode: str, latents: int) -> str | None:
    """A warning when ``latents`` latent steps are asked of a checkpoint whose training reached fewer
    (its ``config.yaml`` ``trained`` record, written by ``vedas train``); None when within them, when the
    mode has no latent steps, or when the checkpoint does not say (saved before the record, or not
    trained by vedas)."""
    from vedas.methods import LATENT_METHODS

    if not isinstance(trained, dict) or mode not in LATENT_METHODS or "latents" not in trained:
        return None
    done = int(trained["latents"])
    if latents <= done:
        return None
    where = f"curriculum stage {trained.get('stage')} of {trained.get('last_stage')}"
    return (
        f"warning: {latents} latent steps asked, but training reached {where} "
        f"({done} latent steps trained, method {trained.get('method')}); "
        f"the other {latents - done} are untrained (train more epochs, or pass --latents {done})"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON: {e}") from None


def check_hf_dir(directory: Path) -> None:
    """A Hugging Face model directory must hold a readable config.json, whole safetensors weights and a
    tokenizer; else a CheckpointError naming the missing or broken file."""
    config = directory / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{config} is missing: {directory} is not a complete model directory")
    _read_json(config)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set((_read_json(index).get("weight_map") or {}).values()))
        if not shards:
            raise CheckpointError(f"{index}: lists no weight files")
    elif (directory / "model.safetensors").is_file():
        shards = ["model.safetensors"]
    else:
        found = sorted(p.name for p in directory.glob("*.bin")) or "nothing"
        raise CheckpointError(
            f"{directory}: no model.safetensors (or its index) to load; found {found} "
            "(only safetensors are read: nothing is unpickled)"
        )
    for name in shards:
        shard = directory / name
        if not shard.is_file():
            raise CheckpointError(f"{shard} is missing (listed in {index.name})")
        check_safetensors(shard)
    if not (directory / "tokenizer_config.json").is_file():
        raise CheckpointError(f"{directory / 'tokenizer_config.json'} is missing: no tokenizer to load")


def _vedas(directory: Path) -> Checkpoint:
    cfg_file = directory / CONFIG_FILE
    meta = _read_meta(cfg_file)
    check_hf_dir(directory / WEIGHTS_DIR)
    _check_extras(directory, meta)
    if verify_enabled():
        from vedas.integrity import check_sums

        check_sums(directory, meta.get("sha256"), cfg_file)
    return Checkpoint("vedas", directory, meta)


def _read_meta(cfg_file: Path) -> dict[str, Any]:
    """A checkpoint's YAML description as a mapping; a CheckpointError naming ``cfg_file`` otherwise."""
    import yaml

    from vedas.config import strict_load, yaml_problem

    try:
        meta = strict_load(cfg_file.read_text()) or {}
    except yaml.YAMLError as e:
        raise CheckpointError(f"{cfg_file}: not valid YAML: {yaml_problem(e)}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cfg_file}: expected a mapping, got {type(meta).__name__}")
    return meta


def _check_extras(directory: Path, meta: dict[str, Any]) -> None:
    for name in meta.get("extras") or {}:
        extra = directory / f"{name}.safetensors"
        if not extra.is_file():
            raise CheckpointError(f"{extra} is missing (the checkpoint lists the extra {name!r})")
        check_safetensors(extra)


def _train_step(directory: Path) -> Checkpoint:
    """A ``step-N`` directory; ``meta`` is its ``model.yaml`` (how it loads as a model), empty for a
    checkpoint saved before step-N described itself (docs/design.md#checkpoints)."""
    for name in ("config.yaml", "trainable.safetensors"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name} is missing: not a complete training checkpoint")
    check_safetensors(directory / "trainable.safetensors")
    if not (directory / STEP_MODEL_FILE).is_file():
        return Checkpoint("train_step", directory, {})
    meta = _read_meta(directory / STEP_MODEL_FILE)
    if meta.get("base") is None:
        check_hf_dir(directory / WEIGHTS_DIR)
    else:
        check_safetensors(directory / DELTA_FILE)
    _check_extras(directory, meta)
    return Checkpoint("train_step", directory, meta)


def _run_dir(directory: Path) -> Checkpoint:
    """A ``vedas train`` output directory: its ``final/``, or the newest checkpoint named when there is none."""
    if (directory / "final").exists():
        return _vedas(directory / "final")
    from vedas.files import latest_step

    last = latest_step(directory / "checkpoints")
    hint = f"load its newest checkpoint, {last}, or resume the run" if last else "it saved no checkpoint"
    raise CheckpointError(
        f"{directory} is a training run without final/ (still running, or stopped early); {hint}"
    )


def _local(directory: Path) -> Checkpoint:
    if not directory.is_dir():
        raise CheckpointError(f"{directory} is a file, not a checkpoint directory")
    if (directory / "state.json").is_file():
        return _train_step(directory)
    if any((directory / name).exists() for name in ("final", "checkpoints", "metrics.jsonl")):
        return _run_dir(directory)
    if (directory / CONFIG_FILE).is_file():
        return _vedas(directory)
    if (directory / "config.json").is_file():
        check_hf_dir(directory)
        return Checkpoint("hf", directory, {})
    raise CheckpointError(
        f"{directory} is not a checkpoint: it has no {CONFIG_FILE} (vedas), config.json (Hugging Face), "
        "final/ (a vedas train run) or state.json (a training checkpoint)"
    )


def looks_local(text: str) -> bool:
    """Whether ``text`` reads as a filesystem path rather than a hub id (``org/name``)."""
    if text.startswith((".", "/", "~")) or "\\" in text or text.endswith("/") or text.count("/") > 1:
        return True
    first = text.split("/", 1)[0]
    return "/" in text and Path(first).exists()


def _hub(repo: str) -> Checkpoint:
    """A hub id, checked once: cached, or reachable; else one line with the fix."""
    from huggingface_hub import constants, try_to_load_from_cache

    cached = try_to_load_from_cache(repo, "config.json")
    if isinstance(cached, str):
        return Checkpoint("hub", repo, {})
    if constants.is_offline_mode():
        raise CheckpointError(
            f"{repo!r}: no such local directory, and HF_HUB_OFFLINE is set with {repo!r} not in the "
            "Hugging Face cache; pass a local checkpoint path, or download it with the network on"
        )
    from huggingface_hub import get_session, hf_hub_url

    url = hf_hub_url(repo, "config.json")
    try:  # one request, no retries: an offline machine should hear so at once
        status = get_session().head(url, timeout=10, follow_redirects=True).status_code
    except Exception as e:  # any transport error means the same to the user
        raise CheckpointError(
            f"{repo!r}: no such local directory, and the hub ({constants.ENDPOINT}) cannot be reached "
            f"({type(e).__name__}); pass a local checkpoint path, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from None
    if status in (401, 403, 404):
        raise CheckpointError(
            f"{repo!r}: no such local directory, and the hub answers {status} for it "
            "(a typo, a private or a gated model); check the path or the id"
        )
    return Checkpoint("hub", repo, {})


def resolve(path_or_hub_id: str | os.PathLike) -> Checkpoint:
    """The checkpoint ``path_or_hub_id`` names, its files checked (module docstring); a CheckpointError otherwise."""
    text = os.fspath(path_or_hub_id)
    path = Path(text).expanduser()
    if path.exists():
        return _local(path)
    if isinstance(path_or_hub_id, Path) or looks_local(text):
        raise CheckpointError(f"{text}: no such checkpoint directory")
    if not HUB_ID.fullmatch(text):
        raise CheckpointError(
            f"{text!r}: neither a local directory nor a hub id (like Qwen/Qwen2-VL-2B-Instruct)"
        )
    return _hub(text)


__all__ = [
    "Checkpoint",
    "check_hf_dir",
    "check_safetensors",
    "looks_local",
    "read_header",
    "resolve",
    "untrained_latents",
    "verify_enabled",
]
