"""The engine's per-step callback as serving uses it: a row ended early leaves the other rows as they were."""

from __future__ import annotations

import torch
from serve_helpers import MAX_TOKENS, random_image

QUESTIONS = ["How many red squares are there?", "What colour is the circle?"]


def test_on_step_ends_one_row_and_leaves_the_others_unchanged(local_vm):
    images = [random_image(56, 84, seed=30), random_image(84, 56, seed=31)]
    full = local_vm.generate(images, QUESTIONS, max_new_tokens=MAX_TOKENS, return_details=True)
    seen: list[list[int]] = []

    def never(tokens: torch.Tensor, finished: torch.Tensor) -> None:
        seen.append(tokens.tolist())

    same = local_vm.generate(images, QUESTIONS, max_new_tokens=MAX_TOKENS, return_details=True, on_step=never)
    assert same.token_ids == full.token_ids and same.texts == full.texts
    assert len(seen) == max(len(t) for t in full.token_ids)  # called once per decoded token
    assert [row[0] for row in seen[: len(full.token_ids[0])]] == full.token_ids[0]
    assert len(full.token_ids[0]) >= 3, "the tiny model answered too short to cut"

    step = {"n": 0}

    def cut_row0_after_two(tokens: torch.Tensor, finished: torch.Tensor) -> torch.Tensor:
        step["n"] += 1
        return torch.tensor([step["n"] == 2, False])

    cut = local_vm.generate(
        images, QUESTIONS, max_new_tokens=MAX_TOKENS, return_details=True, on_step=cut_row0_after_two
    )
    assert cut.token_ids[0] == full.token_ids[0][:2]  # stopped where asked, the token kept
    assert cut.token_ids[1] == full.token_ids[1]  # the other row decoded on, unchanged
