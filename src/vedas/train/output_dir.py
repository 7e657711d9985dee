"""A training run's output directory: one owner at a time, no mixing of runs, bounded checkpoints.

    lock = output_dir.claim(cfg, is_main=True)   # before any data is read or anything is written
    ...                                          # train, checkpoint, export
    output_dir.prune(checkpoints, keep_last=3)   # after each checkpoint
    lock.release()

The rules (:func:`claim`), as HF Trainer and accelerate users expect them:

- **A lock file** (``.vedas-train.lock``) holding the owner's pid. It is an ``flock``, so the
  kernel drops it when the owner dies (even by SIGKILL) and a stale file never blocks a later
  run; a second run into a directory in use fails at once, naming the lock and its pid.
- **A fresh run** (``run.resume false``) needs an empty directory; ``run.overwrite true`` clears
  it first. Otherwise an earlier run's later checkpoints would stay, and a resume would pick them.
- **A resume** (``run.resume true``) continues only the run the directory holds: the fields that
  define a run (:data:`DEFINING`) must equal those saved in its newest checkpoint; each one that
  differs is named with both values.

Only the main process locks and clears; every process checks, and they read the same files, so
they fail alike.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from vedas.config import ConfigError
from vedas.files import Lock, lock_file

LOCK_FILE = ".vedas-train.lock"

DEFINING = (
    "method",
    "model",
    "data",
    "latent",
    "curriculum",
    "scfvr",
    "routing",
    "lora",
    "optim.batch_size",
    "optim.grad_accum",
    "optim.seed",
)
"""The config fields (sections or dotted fields) a resume must keep: what is trained, on what, and
in which order. ``run.*`` (where, how often, how long) and the rest of ``optim`` may change."""


def acquire(out_dir: Path) -> Lock:
    """Lock ``out_dir`` for this process, or raise a ConfigError naming the lock file and its owner."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    return lock_file(
        path,
        lambda owner: (
            f"run.output_dir: {out_dir} is in use by another vedas train (pid {owner}, lock file "
            f"{path}); wait for it or choose another --run.output_dir"
        ),
    )


def contents(out_dir: Path) -> list[str]:
    """What ``out_dir`` holds besides the lock file (sorted names; empty if it does not exist)."""
    if not out_dir.is_dir():
        return []
    return sorted(p.name for p in out_dir.iterdir() if p.name != LOCK_FILE)


def clear(out_dir: Path) -> None:
    """Remove everything in ``out_dir`` but the lock file."""
    for name in contents(out_dir):
        p = out_dir / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _field(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}.{k}"))
        return out
    return {prefix: value}


def differences(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[str]:
    """``field: saved X, now Y`` for every leaf of :data:`DEFINING` that differs between two configs.

    A leaf the saved config lacks (a field added after it was written) counts as its value in
    ``defaults`` (the config class's defaults), which is what that run trained with.
    """
    lines = []
    for name in DEFINING:
        a, b = _leaves(_field(saved, name), name), _leaves(_field(current, name), name)
        d = _leaves(_field(defaults, name), name) if defaults is not None else {}
        for key in sorted(set(a) | set(b)):
            old = a[key] if key in a else d.get(key)
            if old != b.get(key):
                lines.append(f"{key}: saved {old!r}, now {b.get(key)!r}")
    return lines


def check_resume(checkpoint: Path, current: dict[str, Any], defaults: dict[str, Any] | None = None) -> None:
    """Raise a ConfigError naming every defining field where ``current`` differs from ``checkpoint``'s config
    (a field added since that config was written counts as its value in ``defaults``)."""
    import yaml

    saved_file = checkpoint / "config.yaml"
    try:
        saved = yaml.safe_load(saved_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"run.resume: cannot read {saved_file}: {e}") from None
    diff = differences(saved, current, defaults)
    if diff:
        raise ConfigError(
            f"run.resume: {checkpoint} belongs to a different run; {'; '.join(diff)}. "
            "Resume with the saved settings, or start a new run in another --run.output_dir"
        )


def claim(cfg: Any, is_main: bool) -> Lock | None:
    """Apply the module's rules to ``cfg.run.output_dir``; the main process gets the lock (None elsewhere).

    Runs before any data is read: a resume with no checkpoint or with other defining fields fails here.
    """
    from vedas.config import to_dict
    from vedas.train import state as train_state

    out_dir = Path(cfg.run.output_dir)
    lock = acquire(out_dir) if is_main else None
    try:
        if cfg.run.resume and cfg.run.overwrite:
            raise ConfigError(
                "run.overwrite: cannot be combined with run.resume (it would clear what to resume)"
            )
        if cfg.run.resume:
            last = train_state.latest(out_dir / "checkpoints")
            if last is None:
                raise ConfigError(f"run.resume: no checkpoint under {out_dir / 'checkpoints'}")
            check_resume(last, to_dict(cfg), to_dict(type(cfg)()))
            return lock
        held = contents(out_dir)
        if held and not cfg.run.overwrite:
            raise ConfigError(
                f"run.output_dir: {out_dir} is not empty (holds {', '.join(held[:6])}"
                f"{', …' if len(held) > 6 else ''}); continue that run with --run.resume true, "
                "clear it with --run.overwrite true, or choose another --run.output_dir"
            )
        if held and is_main:
            clear(out_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def prune(checkpoints: Path, keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` newest ``step-N`` checkpoints (0 keeps all); returns what went."""
    if keep_last <= 0 or not checkpoints.is_dir():
        return []
    steps = sorted(
        (
            p
            for p in checkpoints.iterdir()
            if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit()
        ),
        key=lambda p: int(p.name.split("-")[1]),
    )
    gone = steps[:-keep_last]
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone


__all__ = ["DEFINING", "LOCK_FILE", "Lock", "acquire", "check_resume", "claim", "clear", "contents", "prune"]
