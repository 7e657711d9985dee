"""What the SCF-VR tests share: a fully trainable tiny Qwen2-VL and a final-stage ``vedas`` batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import vedas
from vedas.config import LatentConfig
from vedas.data import load as load_data
from vedas.method.curriculum import CurriculumConfig, layout, record_steps
from vedas.train.objective import collate


def vedas_batch(data: Path) -> tuple[Any, Any]:
    """The tiny model (3 latents, K = 6) and the collated final-stage ``vedas`` batch of the first two
    training records in ``data``."""
    records = list(load_data("synthetic", path=str(data), split="train"))[:2]
    model, processor = vedas.tiny_model(
        "qwen2_vl", hidden=64, layers=2, vision_depth=1, max_pixels=12544, seed=0
    )
    vm = vedas.VedasModel(model, processor, LatentConfig(latents=3, replay_k=6))
    lays = [
        layout("vedas", record_steps(r.steps, r.rationale, 3), r.answer, 3, 3, CurriculumConfig())
        for r in records
    ]
    return vm, collate(vm, records, lays, "vedas")
