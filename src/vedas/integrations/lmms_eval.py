"""A ``vedas`` model for lmms-eval, registered through its entry-point group ``lmms_eval.models``.

    lmms-eval --model vedas --model_args checkpoint=DIR,mode=vedas,latents=4,batch_size=16 \\
        --tasks vedas_m3cot_fixture --include_path integrations/lmms_eval/tasks

vedas' ``pyproject.toml`` declares the entry point (``vedas = "vedas.integrations.lmms_eval:manifest"``),
so an installed vedas is found by lmms-eval without a fork or a plugin variable.
``generate_until`` runs lmms-eval's requests through the batched engine
(``VedasModel.generate``), ``batch_size`` at a time, in the order lmms-eval gave them, and
returns a ``GenerationResult`` per request whose token counts are: ``input_tokens`` the
prompt (image tokens included), ``reasoning_tokens`` the latent steps taken, and
``output_tokens`` the AR steps (generated tokens, EOS included, plus the latent steps), as
``vedas serve`` reports them in ``usage``.

The context string lmms-eval hands over is the question as the user text; the tasks under
``integrations/lmms_eval/tasks`` render it with vedas' own prompt builder, so a request's
prompt is the one ``vedas eval`` builds for the same record. Model arguments:
``checkpoint`` (required), ``mode`` (a method name, default ``vedas``), ``latents``
(default: the checkpoint's), ``batch_size`` (default 16), ``device`` (``auto``/``cpu``/
``cuda``), ``max_new_tokens`` (default: the task's ``generation_kwargs.max_new_tokens`` or
lmms-eval's ``--gen_kwargs``, else the checkpoint's, as ``vedas eval`` uses; the shipped tasks
set none, so both use the checkpoint's; which one is used is printed once, see
:func:`generation_limit`). Only ``generate_until`` tasks are supported. An image smaller than one merged
patch (28 px) is enlarged to it (:func:`enlarge`), where ``vedas eval`` would refuse it.

Data parallel (``torchrun --nproc_per_node N -m lmms_eval ...`` or ``accelerate launch
--num_processes N -m lmms_eval ...``): lmms-eval shards the documents by rank, pads the shorter
ranks with duplicate requests it drops again, and gathers the samples at rank 0. The plugin
only takes its place from the launcher's environment: the model goes to ``cuda:LOCAL_RANK``
(``device=auto``/``cuda``; ``cpu`` stays ``cpu``), ``rank``/``world_size`` from ``RANK``/
``WORLD_SIZE``. It never wraps the model in DDP (inference needs no gradient sync) and
``generate_until`` runs no collective: each rank batches its own requests, so a rank with fewer
requests never waits on the others mid-generation.
How-to: docs/integrations.md; launch commands: docs/scale.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lmms_eval.api.instance import GenerationResult, Instance, TokenCounts
from lmms_eval.api.model import lmms
from lmms_eval.utils import simple_parse_args_string

from vedas.evaluation.shards import rank_device, rank_world
from vedas.methods import check_method
from vedas.serve.runner import prompt_tokens


def manifest() -> Any:
    """The entry point lmms-eval loads: the model id ``vedas`` and its class (a ``ModelManifest``).

    ``lmms_eval.models`` is imported here, not at the top: importing it loads every entry
    point, this module's included, and a top-level import would make that circular when
    this module is imported first (the manifest then fails to load and ``vedas`` is missing).
    """
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="vedas", simple_class_path=f"{__name__}.VedasLMMS")


def _int_arg(value: Any, name: str, low: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name}: must be an integer, got {value!r}") from None
    if number < low:
        raise ValueError(f"model_args {name}: must be ≥ {low}, got {number}")
    return number


def _as_images(visual: Any) -> list[Any]:
    """lmms-eval's ``doc_to_visual`` gives a list of PIL images (or None, or a list of one list)."""
    if visual is None:
        return []
    if isinstance(visual, list):
        return visual[0] if len(visual) == 1 and isinstance(visual[0], list) else visual
    return [visual]


def enlarge(image: Any, min_side: int) -> Any:
    """``image`` scaled up (bicubic, aspect kept) so its short side is at least ``min_side`` px.

    The engine refuses images smaller than one merged patch (``vedas eval`` stops on them);
    a harness run should not stop on one tiny image, so the plugin enlarges it instead.
    """
    from PIL import Image

    w, h = image.size
    if min(w, h) >= min_side:
        return image
    scale = min_side / min(w, h)
    return image.resize((max(min_side, round(w * scale)), max(min_side, round(h * scale))), Image.BICUBIC)


def generation_limit(model_arg: int | None, task_kwargs: dict[str, Any], checkpoint: int) -> tuple[int, str]:
    """The ``max_new_tokens`` a batch uses and where it came from: ``model_args`` wins, then the
    task (or lmms-eval's ``--gen_kwargs``), then the checkpoint's, which is ``vedas eval``'s default."""
    if model_arg is not None:
        return model_arg, "model_args max_new_tokens"
    task = task_kwargs.get("max_new_tokens")
    if task not in (None, ""):
        return _int_arg(task, "max_new_tokens (from the task's generation_kwargs)", 1), (
            "the task's generation_kwargs (or --gen_kwargs)"
        )
    return checkpoint, "the checkpoint's config, as vedas eval uses"


def _cut(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


class VedasLMMS(lmms):
    """lmms-eval's view of a vedas checkpoint: ``generate_until`` through ``VedasModel.generate``."""

    is_simple = True

    def __init__(
        self,
        checkpoint: str,
        mode: str = "vedas",
        latents: int | str | None = None,
        batch_size: int | str = 16,
        device: str | None = "auto",
        max_new_tokens: int | str | None = None,
        **unused: Any,
    ) -> None:
        super().__init__()
        import vedas

        self.mode = check_method(mode, "model_args mode")
        self.latents = None if latents in (None, "", "None") else _int_arg(latents, "latents", 0)
        self.batch_size = _int_arg(batch_size, "batch_size", 1)
        self.max_new_tokens = (
            None if max_new_tokens is None else _int_arg(max_new_tokens, "max_new_tokens", 1)
        )
        rank, local_rank, world = rank_world()
        # lmms-eval sets these too, but only once its evaluate() starts; set here, the progress bar
        # and the announcement below are rank 0's from the start
        self._rank, self._world_size = rank, world
        self.vm = vedas.load(checkpoint, device=rank_device(device, local_rank))
        self._said: set[tuple[int, str]] = set()  # the generation limits already announced

    @property
    def device(self) -> Any:
        """The model's device: lmms-eval puts its rank-count tensors there when it pads ranks."""
        return self.vm.device

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> VedasLMMS:
        """``--model_args`` win over lmms-eval's CLI defaults (it always passes ``--batch_size``, default 1)."""
        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        extra.pop("max_batch_size", None)
        return cls(**args, **extra)

    # --- lmms-eval's request types -------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[GenerationResult]:
        from tqdm.auto import tqdm

        out: list[GenerationResult] = []
        bar = tqdm(total=len(requests), desc="vedas", disable=self.rank != 0)
        start = 0
        while start < len(requests):
            # one engine call takes one set of generation settings: cut the chunk where they change
            end, kwargs = start + 1, requests[start].args[1]
            while end < len(requests) and end - start < self.batch_size and requests[end].args[1] == kwargs:
                end += 1
            out += self._batch(requests[start:end])
            bar.update(end - start)
            start = end
        bar.close()
        return out

    def _batch(self, requests: Sequence[Instance]) -> list[GenerationResult]:
        contexts, gen_kwargs = [r.args[0] for r in requests], dict(requests[0].args[1] or {})
        side = self.vm.backbone.patch_size * self.vm.backbone.merge_size
        images = [
            [enlarge(im, side) for im in _as_images(fn(self.task_dict[t][s][i]))]
            for _, _, fn, i, t, s in (r.args for r in requests)
        ]
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        limit, source = generation_limit(self.max_new_tokens, gen_kwargs, self.vm.config.max_new_tokens)
        if (limit, source) not in self._said and self.rank == 0:
            # a silent difference from `vedas eval` is what this line prevents: say which limit is used
            print(f"vedas: max_new_tokens={limit} (from {source})", file=sys.stderr)
            self._said.add((limit, source))
        d = self.vm.generate(
            [im or None for im in images],
            contexts,
            mode=self.mode,
            latents=self.latents,
            max_new_tokens=limit,
            temperature=float(gen_kwargs.get("temperature", 0) or 0),
            return_details=True,
        )
        prompts = prompt_tokens(self.vm, contexts, images, [None] * len(contexts), self.mode)
        return [
            GenerationResult(
                text=_cut(text, until),
                token_counts=TokenCounts(
                    input_tokens=p, output_tokens=steps, reasoning_tokens=steps - len(ids)
                ),
            )
            for text, ids, steps, p in zip(d.texts, d.token_ids, d.ar_steps, prompts)
        ]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("vedas: loglikelihood tasks are not supported; use generate_until tasks")

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "vedas: multi-round tasks are not supported; the latent engine answers once"
        )
