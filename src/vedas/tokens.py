"""The latent special tokens and how they enter a vocabulary.

``<|latent_start|>`` closes the prompt, ``<|latent|>`` marks a latent slot in training
layouts, ``<|latent_end|>`` opens the answer. New rows are *copied* from an existing token
(docs/design.md#latent-loop) — not left random, and not assigned to themselves (the no-op the reference code
inherited) — in both the input embedding and an untied LM head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

LATENT_START = "<|latent_start|>"
LATENT = "<|latent|>"
LATENT_END = "<|latent_end|>"
LATENT_TOKENS = (LATENT_START, LATENT, LATENT_END)
# The row new tokens copy (Coconut copies from "<<"); its last sub-token is used.
INIT_FROM = "<<"


@dataclass(frozen=True)
class LatentTokenIds:
    start: int
    latent: int
    end: int


def latent_token_ids(tokenizer: Any) -> LatentTokenIds:
    ids = tokenizer.convert_tokens_to_ids(list(LATENT_TOKENS))
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = [t for t, i in zip(LATENT_TOKENS, ids) if i is None or (unk is not None and i == unk)]
    if missing:
        raise ValueError(
            f"tokenizer lacks the latent tokens {missing}: call vedas.tokens.add_latent_tokens first"
        )
    return LatentTokenIds(*ids)


def add_latent_tokens(model: Any, tokenizer: Any, init_from: str = INIT_FROM) -> LatentTokenIds:
    """Add the latent tokens to ``tokenizer`` and ``model`` (idempotent); returns their ids."""
    existing = set(tokenizer.get_vocab())
    new = [t for t in LATENT_TOKENS if t not in existing]
    if new:
        src_ids = tokenizer.encode(init_from, add_special_tokens=False)
        if not src_ids:
            raise ValueError(f"init_from={init_from!r} encodes to no token")
        src = src_ids[-1]
        tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        old = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > old:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            head = model.get_output_embeddings()
            for tok in new:
                i = tokenizer.convert_tokens_to_ids(tok)
                emb[i] = emb[src]
                if head is not None and head.weight is not emb:
                    head.weight[i] = head.weight[src]
    return latent_token_ids(tokenizer)
