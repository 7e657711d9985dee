"""Tiny random models of the real Qwen2-VL / Qwen2.5-VL / Qwen3-VL / Chameleon architectures, built offline.

``tiny_model()`` returns ``(model, processor)``: a randomly initialised
``Qwen2VLForConditionalGeneration`` (or the 2.5 / 3 / 3-MoE class, or ``ChameleonForConditionalGeneration``
with a small VQ-VAE and a vocabulary map of its image codes) built from a config, a processor
(the Qwen ones without the video part), a byte-level tokenizer (or a small BPE trained on the spot from a
corpus), a Qwen-style chat template, and the latent special tokens added the same way as
for a real checkpoint (:func:`vedas.tokens.add_latent_tokens`). Nothing is downloaded.

    >>> model, processor = tiny_model("qwen2_vl", hidden=64, layers=2, seed=0)
    >>> model, processor = tiny_model("chameleon", image_size=64)   # 8×8 VQ grid, 64 codes
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from transformers import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from vedas.tokens import add_latent_tokens

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The placeholder and the image start/end tokens the Chameleon processor uses by default."""
QWEN_SPECIAL = [
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character table (what byte-level BPE vocabularies use)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_tokenizer(bpe_corpus: Iterable[str] | None = None, bpe_vocab: int = 512) -> Qwen2Tokenizer:
    """A Qwen2Tokenizer: byte-level (256 symbols) or, given a corpus, a byte-level BPE trained on it."""
    alphabet = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    if bpe_corpus is not None:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=bpe_vocab, initial_alphabet=alphabet, show_progress=False)
        tk.train_from_iterator(list(bpe_corpus), trainer)
        state = tk.model
        vocab = dict(sorted(tk.get_vocab().items(), key=lambda kv: kv[1]))
        import json

        merges = [
            tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m)
            for m in json.loads(tk.to_str())["model"]["merges"]
        ]
        del state
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={},
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL})
    return tok


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (t, h, w) like Qwen's [16, 24, 24] for head_dim 128."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def vision_token_ids(tokenizer: Any) -> dict[str, int]:
    """The Qwen-VL config's image/video/vision-boundary token ids, read from ``tokenizer``."""
    c = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": c("<|image_pad|>"),
        "video_token_id": c("<|video_pad|>"),
        "vision_start_token_id": c("<|vision_start|>"),
        "vision_end_token_id": c("<|vision_end|>"),
    }


def tiny_model(
    arch: str = "qwen2_vl",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    vision_depth: int = 2,
    vision_hidden: int = 32,
    vision_heads: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    seed: int = 0,
    vision_seed: int | None = None,
    bpe_corpus: Iterable[str] | None = None,
    bpe_vocab: int = 512,
    attn_implementation: str = "sdpa",
    vocab_size: int | None = None,
    image_size: int = 64,
    vq_codes: int = 64,
    vq_levels: int = 4,
) -> tuple[Any, Any]:
    """Build a random model of the real architecture and its processor, offline.

    Args:
        arch: ``"qwen2_vl"``, ``"qwen2_5_vl"``, ``"qwen3_vl"`` or ``"qwen3_vl_moe"`` (patch 16,
            DeepStack after the first decoder layer(s); the MoE one with 4 experts, top 2), or ``"chameleon"``.
        hidden, layers, heads, kv_heads, intermediate: text decoder sizes (intermediate defaults to 2×hidden).
        vision_depth, vision_hidden, vision_heads: vision tower sizes (its merger outputs ``hidden``).
        min_pixels, max_pixels: the image processor's resize bounds (smart_resize).
        seed: torch seed for the random weights.
        vision_seed: if given, the vision tower's random weights come from this seed instead, the same
            whatever ``seed`` and the tokenizer are (an experiment can vary data and initialisation
            while the random tower, which the demo does not train, stays one fixed draw).
        bpe_corpus: if given, train a byte-level BPE of ``bpe_vocab`` tokens on it (shorter sequences).
        vocab_size: the embedding and lm_head rows, when more than the tokenizer's (a real model's
            vocabulary size, e.g. 152064 for Qwen2-VL, so that the weights weigh what the real ones do).
        image_size, vq_codes, vq_levels: Chameleon only: the square input side, the VQ codebook size and
            the VQ-VAE's resolutions (grid side = image_size / 2^(vq_levels−1); 64 px, 4 levels: 8×8).
            ``vision_*`` and ``min/max_pixels`` are Qwen-only.
    """
    from vedas.backbones import arch_module  # here: the package imports this module while it loads

    mod = arch_module(arch)
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden ({hidden}) must divide by heads ({heads}) and heads by kv_heads ({kv_heads})"
        )
    head_dim = hidden // heads
    if head_dim % 8:
        raise ValueError(f"head_dim = hidden/heads = {head_dim} must be a multiple of 8 for M-RoPE sections")
    tok = build_tokenizer(bpe_corpus, bpe_vocab)
    # a backbone module with its own tiny parts (tiny_processor, tiny_model_config) builds them from
    # these; the Qwen-VL family shares the defaults below
    options = dict(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
        vision_heads=vision_heads,
        image_size=image_size,
        vq_codes=vq_codes,
        vq_levels=vq_levels,
    )
    if hasattr(mod, "tiny_processor"):
        processor = mod.tiny_processor(tok, CHAT_TEMPLATE, **options)
    else:
        processor = _qwen_processor(mod, tok, min_pixels, max_pixels)
    c = tok.convert_tokens_to_ids
    text = dict(
        vocab_size=max(len(tok), vocab_size or 0),
        hidden_size=hidden,
        intermediate_size=intermediate or 2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        eos_token_id=c("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        bos_token_id=None,
    )
    if hasattr(mod, "tiny_model_config"):
        cfg = mod.tiny_model_config(text, tok, **options)
    else:
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 1e4,
            "mrope_section": _mrope_section(head_dim),
        }
        cfg = mod.tiny_config(text, vision_depth, vision_hidden, vision_heads, **vision_token_ids(tok))
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = mod.MODEL_CLASS(cfg)
    if vision_seed is not None:
        reseed_vision(mod.MODEL_CLASS, cfg, model, vision_seed)
    add_latent_tokens(model, tok)
    model.eval()  # after resizing: the new lm_head module starts in training mode
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = c("<|im_end|>")
    return model, processor


def vision_tower(model: Any) -> torch.nn.Module:
    """The vision tower of a tiny model (Qwen-VL ``visual``, Chameleon ``vqmodel``)."""
    for name in ("visual", "vqmodel"):
        if hasattr(model.model, name):
            return getattr(model.model, name)
    raise ValueError(f"{type(model).__name__}: no vision tower (model.visual or model.vqmodel) to reseed")


def reseed_vision(model_class: Any, cfg: Any, model: Any, vision_seed: int) -> None:
    """Give ``model``'s vision tower the weights a model built from ``vision_seed`` has.

    The donor is built with a fixed text vocabulary (where the config has one apart from the
    tower), so the tower's draw does not depend on the tokenizer trained on the data; the global
    random stream is left as it was, so everything drawn after this is unchanged.
    """
    donor_cfg = copy.deepcopy(cfg)
    text = getattr(donor_cfg, "text_config", donor_cfg)  # Chameleon: one config
    text.vocab_size = max(DONOR_VOCAB, text.vocab_size)  # not below the image tokens' ids
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(vision_seed)
        donor = model_class(donor_cfg)
    vision_tower(model).load_state_dict(vision_tower(donor).state_dict())


DONOR_VOCAB = 4096
"""Text vocabulary of the donor model :func:`reseed_vision` builds (its text weights are thrown away)."""


def _qwen_processor(mod: Any, tok: Qwen2Tokenizer, min_pixels: int, max_pixels: int) -> Any:
    """The Qwen-VL processor over ``tok``: the arch module's patch size and normalisation (Qwen3-VL: 16, 0.5)."""
    norm = (
        {"image_mean": list(mod.IMAGE_MEAN), "image_std": list(mod.IMAGE_STD)}
        if hasattr(mod, "IMAGE_MEAN")
        else {}
    )
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=getattr(mod, "PATCH_SIZE", 14),
        merge_size=2,
        temporal_patch_size=2,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        **norm,
    )
    return mod.PROCESSOR_CLASS(image_processor=image_processor, tokenizer=tok, chat_template=CHAT_TEMPLATE)
