"""``vedas analyze gradients``: token-wise gradient norms and LoRA gradient nuclear norms (Fig. 1a–c).

    vedas analyze gradients --config configs/synthetic_tiny.yaml --steps 40 --out runs/analysis/grads \\
        --data.path data/synth            # any config field can follow, as for `vedas train`

Trains ``--steps`` optimizer steps as ``vedas train`` takes them, built by the recipe's own
functions (:func:`vedas.train.recipe.setup_data`, :func:`~vedas.train.recipe.setup` and
:func:`~vedas.train.recipe.train_step`: GAP's modules, the difficulty split, AdamW with the
config's warm-up + cosine schedule over ``--steps``, accumulation and clip; the curriculum stage
follows the epoch; one process, DeepSpeed off) and measures, at the weights *before* each
update, on fixed probe batches (eval mode, so the numbers are deterministic; a new training
batch every step would make the curves mostly sampling noise):

(a) **Token-wise gradient norms** (Fig. 1a). ‖∂L/∂h_l,i‖₂ for the output h_l of every decoder
    layer l at every token i of every pass (the prompt prefill, each latent chunk, the
    teacher-forced text), for a probe batch of the first ``--probe-size`` training records.
    Tokens are typed ``visual`` (image tokens of the prompt), ``text`` (the prompt's text),
    ``replay`` and ``latent`` (the chunks [B^t, z^t]) and ``target`` (supervised text); the
    means per type and layer are curves over steps, and the first probe sample's per-token
    norms form a token × step heatmap per layer. Recorded with tensor hooks on the layer
    outputs, installed by :class:`TokenGradients` for the probe pass only and removed after.
    Note: a token's last-layer output reaches the loss only if it is read by the LM head or
    fed back as a latent, so most last-layer norms are exactly zero — that is the gradient.

(b, c) **LoRA gradient nuclear norms** for easy vs hard samples (Fig. 1b–c). After
    ``--probe-after`` steps the model answers ``--val-n`` records of ``--val-split`` with
    :func:`vedas.evaluation.evaluate.evaluate`: correct → easy, wrong → hard (the paper's split by early
    validation correctness). If either group is empty (a young model often gets everything
    wrong) the split falls back to the per-sample validation loss (lower half easy), and the
    JSON and the output say so; ``--easy-hard loss`` asks for that rule directly. From then
    on, each step computes the loss gradient on an easy batch and on a hard batch (up to
    ``--probe-size`` each) separately and records ‖∇W_A‖_* and ‖∇W_B‖_* of the LoRA
    matrices of the q/k/v/o projections of every layer. LoRA B starts at zero, so ∇W_A is
    exactly zero until B has moved.

If the config does not enable LoRA, this command enables it (with the config's r, α and
targets) and says so: the figure is about LoRA matrices. Writes ``token_grad_heatmap.png``,
``token_grad_means.png``, ``lora_nuclear_norms.png`` and ``gradients.json``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vedas.analysis import base

HELP = "token-wise gradient norms (visual vs text) and LoRA nuclear norms, easy vs hard (Fig. 1)"
KINDS = ("pad", "text", "visual", "replay", "latent", "target")
SHOWN_KINDS = ("visual", "text", "replay", "latent", "target")
PROJS = ("q", "k", "v", "o")
LORA_PARAM = re.compile(r"layers\.(\d+)\.self_attn\.([qkvo])_proj\.lora_([AB])\.")


# --- (a) token-wise gradient norms ----------------------------------------------------------------


@dataclass
class TokenNorms:
    """One probe pass's result: per-layer, per-token gradient norms and each token's kind."""

    norms: torch.Tensor  # (layers, B, total) ‖∂L/∂h_l,i‖₂, 0 where no gradient reached the token
    kinds: torch.Tensor  # (B, total) index into KINDS

    def mean(self, layer: int, kind: str) -> float:
        sel = self.kinds == KINDS.index(kind)
        return float(self.norms[layer][sel].mean()) if bool(sel.any()) else float("nan")

    def sample(self, layer: int, b: int = 0) -> torch.Tensor:
        """Sample ``b``'s norms at its real (non-pad) tokens, in sequence order."""
        return self.norms[layer, b][self.kinds[b] != 0]

    def sample_kinds(self, b: int = 0) -> list[str]:
        return [KINDS[k] for k in self.kinds[b][self.kinds[b] != 0].tolist()]


class TokenGradients:
    """Context manager: records ‖∂L/∂h‖ per token at every decoder layer's output during backward.

    A forward pre-hook on the text decoder notes each pass's new-token mask; a forward hook on
    each decoder layer registers a tensor hook on that layer's output, which receives the full
    gradient of the loss w.r.t. it. All module hooks are removed on exit; tensor hooks die with
    the graph. Call :meth:`result` after ``loss.backward()``.
    """

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone
        self.layers = list(backbone.decoder_layers())
        self.passes: list[torch.Tensor] = []
        self.grads: list[list[torch.Tensor | None]] = [[] for _ in self.layers]
        self.handles: list[Any] = []

    def __enter__(self) -> TokenGradients:
        self.handles.append(self.backbone.decoder().register_forward_pre_hook(self._pre, with_kwargs=True))
        for i, layer in enumerate(self.layers):
            self.handles.append(layer.register_forward_hook(self._post(i)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _pre(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            raise RuntimeError("TokenGradients expects the decoder to be called with inputs_embeds=")
        n = embeds.shape[1]
        mask = kwargs.get("attention_mask")
        new = torch.ones(embeds.shape[:2], dtype=torch.bool) if mask is None else mask[:, -n:].bool().cpu()
        self.passes.append(new)

    def _post(self, i: int) -> Any:
        def hook(module: Any, args: tuple, output: Any) -> None:
            h = output[0] if isinstance(output, tuple) else output
            slot = len(self.grads[i])
            self.grads[i].append(None)
            if h.requires_grad:

                def keep(g: torch.Tensor) -> None:
                    self.grads[i][slot] = g.detach().float().norm(dim=-1).cpu()

                h.register_hook(keep)

        return hook

    def result(self, input_ids: torch.Tensor, image_token_id: int) -> TokenNorms:
        """Assemble the recorded passes: first = prompt, last = supervised text, between = latent chunks."""
        if any(len(g) != len(self.passes) for g in self.grads):
            raise RuntimeError("a decoder layer ran a different number of times than the decoder")
        kinds = []
        last = len(self.passes) - 1
        for p, mask in enumerate(self.passes):
            k = torch.zeros(mask.shape, dtype=torch.long)
            if p == 0:
                is_img = input_ids.cpu().eq(image_token_id)
                k[mask] = KINDS.index("text")
                k[mask & is_img] = KINDS.index("visual")
            elif p == last:
                k[mask] = KINDS.index("target")
            else:
                k[mask] = KINDS.index("replay")
                k[:, -1][mask[:, -1]] = KINDS.index("latent")
            kinds.append(k)
        norms = torch.stack(
            [
                torch.cat(
                    [g if g is not None else torch.zeros(m.shape) for g, m in zip(layer, self.passes)],
                    dim=1,
                )
                for layer in self.grads
            ]
        )
        return TokenNorms(norms=norms, kinds=torch.cat(kinds, dim=1))


def clear_grads(objective: Any) -> None:
    """Drop every gradient a probe left: the objective's and the checkpoint extras' (routers…)."""
    objective.zero_grad(set_to_none=True)
    for module in objective.vm[0].extras.modules().values():
        module.zero_grad(set_to_none=True)


def token_norms(objective: Any, batch: Any) -> tuple[TokenNorms, float]:
    """Forward + backward of ``objective`` on ``batch`` with :class:`TokenGradients`; grads are cleared."""
    vm = objective.vm[0]
    clear_grads(objective)
    with TokenGradients(vm.backbone) as rec:
        loss = objective(batch)["loss"]
        loss.backward()
    clear_grads(objective)
    return rec.result(batch.prompt.input_ids, vm.backbone.image_token_id), loss.item()


# --- (b, c) LoRA gradient nuclear norms -------------------------------------------------------------


def lora_params(model: Any) -> dict[tuple[int, str, str], torch.nn.Parameter]:
    """(layer, projection q/k/v/o, A/B) -> the LoRA weight of that decoder attention projection."""
    out = {}
    for name, p in model.named_parameters():
        m = LORA_PARAM.search(name)
        if m:  # decoder layers only: vision blocks are named blocks.N.attn (Qwen-VL), a VQ-VAE has none
            out[(int(m.group(1)), m.group(2), m.group(3))] = p
    return out


def nuclear_norms(
    params: dict[tuple[int, str, str], torch.nn.Parameter],
) -> dict[tuple[int, str, str], float]:
    """‖grad‖_* (sum of singular values) of each parameter's gradient (0 where there is none)."""
    out = {}
    for key, p in params.items():
        g = p.grad
        out[key] = 0.0 if g is None else float(torch.linalg.matrix_norm(g.detach().float(), ord="nuc"))
    return out


def group_nuclear(
    objective: Any, batch: Any, params: dict
) -> tuple[dict[tuple[int, str, str], float], float]:
    clear_grads(objective)
    loss = objective(batch)["loss"]
    loss.backward()
    out = nuclear_norms(params)
    clear_grads(objective)
    return out, loss.item()


# --- the run ---------------------------------------------------------------------------------------


def resolve_config(path: str, overrides: list[str]) -> tuple[Any, bool]:
    """The training config with LoRA on and DeepSpeed off (one process); also whether LoRA was off."""
    from vedas.config import ConfigError
    from vedas.train.config import load_config

    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        raise base.AnalysisError(f"--config/overrides: {e}") from None
    enabled_here = not cfg.lora.enabled
    cfg.lora.enabled = True
    cfg.run.deepspeed = None
    targets = [t for t in cfg.lora.target_modules if t.removesuffix("_proj") in PROJS]
    base.require(
        bool(targets),
        "--lora.target_modules",
        f"{cfg.lora.target_modules} has none of q_proj/k_proj/v_proj/o_proj; Fig. 1b–c needs them",
    )
    return cfg, enabled_here


def pick_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "auto":
        count = min(4, n_layers)
        return sorted({round(i * (n_layers - 1) / max(count - 1, 1)) for i in range(count)})
    try:
        layers = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise base.AnalysisError(
            f"--heatmap-layers: expected 'auto' or a list like 0,3,7, got {spec!r}"
        ) from None
    bad = [x for x in layers if not 0 <= x < n_layers]
    base.require(
        not bad and bool(layers), "--heatmap-layers", f"layers {bad or spec} not in 0..{n_layers - 1}"
    )
    return layers


def setup_run(cfg: Any, steps: int, val_split: str, val_n: int) -> tuple[Any, list[Any]]:
    """The run ``vedas train`` starts from ``cfg`` (the recipe's own setup: GAP's modules, the difficulty
    split, the optimizer with a schedule of ``steps``), prepared by the accelerator, and the validation records."""
    from vedas.config import ConfigError
    from vedas.data import load as load_data
    from vedas.train import recipe

    acc = recipe.setup_accelerator(cfg)
    recipe.seed_everything(cfg.optim.seed)
    d = cfg.data
    try:
        data = recipe.setup_data(cfg)
        val = list(load_data(d.name, path=d.path, split=val_split, limit=val_n, skip_bad=d.skip_bad))
        base.require(len(val) >= 2, "--val-n", f"needs ≥ 2 validation records, got {len(val)}")
        run = recipe.setup(cfg, acc, data, total_steps=steps)
    except ConfigError as e:
        raise base.AnalysisError(str(e)) from None
    except (OSError, ValueError) as e:
        raise base.AnalysisError(f"--data.path/--val-split: cannot read the data: {e}") from None
    run.checkpoints = None  # the analysis writes none
    run.wrapped, run.optimizer = acc.prepare(run.objective, run.optimizer)
    return run, val


def val_batch(run: Any, records: list[Any], stage: int) -> Any:
    """Validation records are outside the difficulty split: they get the configured method."""
    from vedas.train.recipe import collate_records

    return collate_records(run.vm, run.cfg, records, stage, hard=None)


def split_easy_hard(run: Any, val: list[Any], stage: int, rule: str, progress: bool) -> dict[str, Any]:
    """Evaluate the validation records; correct → easy, wrong → hard (or by loss, see the module doc)."""
    from vedas.evaluation.evaluate import evaluate

    cfg = run.cfg
    report = evaluate(
        run.vm, val, method=cfg.method, batch_size=cfg.optim.batch_size, warmup=False, progress=progress
    )
    correct = {s["id"]: bool(s["correct"]) for s in report["per_sample"]}
    run.objective.eval()
    losses = {}
    with torch.no_grad():
        for r in val:
            losses[r.id] = float(run.objective(val_batch(run, [r], stage))["loss"])
    easy = [r.id for r in val if correct[r.id]]
    hard = [r.id for r in val if not correct[r.id]]
    used = "correct"
    if rule == "loss" or not easy or not hard:
        if rule != "loss":
            used = f"loss (fallback: {len(easy)} correct and {len(hard)} wrong of {len(val)})"
        else:
            used = "loss"
        ranked = sorted(val, key=lambda r: losses[r.id])
        half = len(ranked) // 2
        easy, hard = [r.id for r in ranked[:half]], [r.id for r in ranked[half:]]
    return {
        "rule": used,
        "accuracy": report["accuracy"],
        "per_sample": [
            {"id": s["id"], "correct": s["correct"], "loss": losses[s["id"]], "prediction": s["prediction"]}
            for s in report["per_sample"]
        ],
        "easy_ids": easy,
        "hard_ids": hard,
    }


@dataclass
class Curves:
    """What the command records, step by step: token-norm means and heatmap rows, nuclear norms."""

    n_layers: int
    heat_layers: list[int]
    means: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    sample0: dict[int, list[list[float]]] = field(default_factory=dict)
    sample0_kinds: list[list[str]] = field(default_factory=list)
    nuclear: dict[str, dict[tuple[int, str, str], list[float]]] = field(
        default_factory=lambda: {"easy": {}, "hard": {}}
    )
    nuclear_steps: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.means = {li: {k: [] for k in SHOWN_KINDS} for li in range(self.n_layers)}
        self.sample0 = {li: [] for li in self.heat_layers}

    def add_tokens(self, tn: TokenNorms) -> None:
        for li in range(self.n_layers):
            for k in SHOWN_KINDS:
                self.means[li][k].append(tn.mean(li, k))
        for li in self.heat_layers:
            self.sample0[li].append(tn.sample(li).tolist())
        self.sample0_kinds.append(tn.sample_kinds())

    def add_nuclear(self, group: str, values: dict[tuple[int, str, str], float]) -> None:
        for key, v in values.items():
            self.nuclear[group].setdefault(key, []).append(v)

    def nuclear_report(self) -> dict[str, Any]:
        return {
            "steps": self.nuclear_steps,
            **{
                g: {
                    str(li): {
                        p: {ab: self.nuclear[g].get((li, p, ab), []) for ab in ("A", "B")} for p in PROJS
                    }
                    for li in range(self.n_layers)
                }
                for g in ("easy", "hard")
            },
        }


def train_update(run: Any, state: Any, step: int, stage: int) -> float:
    """Optimizer step ``step`` exactly as ``vedas train`` takes it (:func:`vedas.train.recipe.train_step`)."""
    from vedas.train.recipe import epoch_order, train_step

    epoch, b = divmod(step, run.steps_per_epoch)
    state.batch_in_epoch = b * run.cfg.optim.grad_accum
    order = epoch_order(len(run.data.records), run.cfg.optim.seed, epoch)
    return train_step(run, state, epoch, stage, order)["loss"].item()


def _check_args(args: argparse.Namespace) -> None:
    base.require(args.steps >= 1, "--steps", f"must be ≥ 1, got {args.steps}")
    base.require(
        0 <= args.probe_after < args.steps,
        "--probe-after",
        f"must be in 0..{args.steps - 1}, got {args.probe_after}",
    )
    base.require(args.probe_size >= 1, "--probe-size", f"must be ≥ 1, got {args.probe_size}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Train ``--steps`` steps with the config's recipe, probing before each update (the module doc)."""
    from vedas.train.recipe import collate_records, stage_of
    from vedas.train.state import TrainState

    cfg, enabled_here = resolve_config(args.config, list(getattr(args, "overrides", []) or []))
    if enabled_here:
        print(
            f"LoRA is off in the config; enabled for this analysis (r={cfg.lora.r}, alpha={cfg.lora.alpha}, "
            f"targets={cfg.lora.target_modules}): Fig. 1b–c is about LoRA matrices.",
            file=sys.stderr,
        )
    _check_args(args)
    run, val = setup_run(cfg, args.steps, args.val_split, args.val_n)
    n_layers = len(run.vm.backbone.decoder_layers())
    curves = Curves(n_layers, pick_layers(args.heatmap_layers, n_layers))
    lora = lora_params(run.vm.model)
    probe_records = list(run.data.records)[: args.probe_size]
    history: list[dict[str, Any]] = []
    split: dict[str, Any] | None = None
    groups: dict[str, list[Any]] = {}
    state = TrainState()
    bar = base.progress(args.steps, "gradients", not args.no_progress)
    for step in range(args.steps):
        stage = stage_of(cfg, step // run.steps_per_epoch)
        row: dict[str, Any] = {"step": step, "stage": stage}
        run.objective.eval()
        probe = collate_records(run.vm, cfg, probe_records, stage, run.data.hard)
        tn, row["probe_loss"] = token_norms(run.objective, probe)
        curves.add_tokens(tn)
        if step == args.probe_after:
            split = split_easy_hard(run, val, stage, args.easy_hard, not args.no_progress)
            by_id = {r.id: r for r in val}
            groups = {g: [by_id[i] for i in split[f"{g}_ids"][: args.probe_size]] for g in ("easy", "hard")}
            print(
                f"easy/hard at step {step} by {split['rule']}: {len(split['easy_ids'])} easy, "
                f"{len(split['hard_ids'])} hard (validation accuracy {split['accuracy']:.3f})"
            )
        if split is not None:
            run.objective.eval()
            curves.nuclear_steps.append(step)
            for g, recs in groups.items():
                values, row[f"{g}_loss"] = group_nuclear(run.objective, val_batch(run, recs, stage), lora)
                curves.add_nuclear(g, values)
        row["train_loss"] = train_update(run, state, step, stage)
        history.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", stage=stage)
    bar.close()
    assert split is not None
    return build_report(args, cfg, enabled_here, curves, history, split, groups, probe_records)


def build_report(
    args: argparse.Namespace,
    cfg: Any,
    enabled_here: bool,
    curves: Curves,
    history: list[dict[str, Any]],
    split: dict[str, Any],
    groups: dict[str, list[Any]],
    probe_records: list[Any],
) -> dict[str, Any]:
    """The JSON report (``gradients.json``) the figures are drawn from."""
    from vedas.config import to_dict

    return {
        "config": to_dict(cfg),
        "lora_enabled_by_command": enabled_here,
        "steps": args.steps,
        "probe_after": args.probe_after,
        "layers": curves.n_layers,
        "history": history,
        "token_norms": {
            "probe_ids": [r.id for r in probe_records],
            "kinds": list(SHOWN_KINDS),
            "mean": {str(li): curves.means[li] for li in range(curves.n_layers)},
            "heatmap_layers": curves.heat_layers,
            "sample0": {str(li): curves.sample0[li] for li in curves.heat_layers},
            "sample0_kinds": curves.sample0_kinds,
        },
        "easy_hard": {
            **split,
            "evaluated_at_step": args.probe_after,
            "val_split": args.val_split,
            "probe_easy_ids": [r.id for r in groups["easy"]],
            "probe_hard_ids": [r.id for r in groups["hard"]],
        },
        "nuclear": curves.nuclear_report(),
    }


# --- figures -------------------------------------------------------------------------------------------


def draw_heatmap(report: dict[str, Any], path: Path) -> Path:
    """Top: each token's kind per step (the layout changes with the curriculum stage); below: one
    token × step heatmap of ‖∂L/∂h‖ per chosen layer, log colour scale, exact zeros blank."""
    import numpy as np
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

    tn = report["token_norms"]
    layers = tn["heatmap_layers"]
    kinds = tn["sample0_kinds"]
    width = max(len(k) for k in kinds)
    fig, axes = base.figure(
        1 + len(layers),
        1,
        (10, 1.2 + 1.9 * len(layers)),
        height_ratios=[0.5] + [1.0] * len(layers),
        sharex=True,
    )
    codes = np.full((len(kinds), width), np.nan)
    for s, row in enumerate(kinds):
        codes[s, : len(row)] = [SHOWN_KINDS.index(k) for k in row]
    top = axes[0, 0]
    top.imshow(
        np.ma.masked_invalid(codes),
        aspect="auto",
        cmap=ListedColormap([base.COLORS[k] for k in SHOWN_KINDS]),
        vmin=-0.5,
        vmax=len(SHOWN_KINDS) - 0.5,
        interpolation="nearest",
    )
    present = {k for row in kinds for k in row}
    top.legend(
        handles=[Patch(color=base.COLORS[k], label=k) for k in SHOWN_KINDS if k in present],
        fontsize=7,
        ncol=5,
        loc="lower left",
        bbox_to_anchor=(0, 1.02),
        frameon=False,
    )
    top.set_ylabel("kind\nstep", fontsize=8)
    for j, layer in enumerate(layers):
        rows = tn["sample0"][str(layer)]
        grid = np.full((len(rows), width), np.nan)
        for s, r in enumerate(rows):
            grid[s, : len(r)] = r
        positive = grid[np.isfinite(grid) & (grid > 0)]
        heat = axes[1 + j, 0]
        if positive.size:
            norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-4), vmax=positive.max())
            im = heat.imshow(
                np.ma.masked_where(~(grid > 0), grid),
                aspect="auto",
                cmap="magma",
                norm=norm,
                interpolation="nearest",
            )
            fig.colorbar(im, ax=heat, pad=0.01, label="‖∂L/∂h‖₂")
        heat.set_ylabel(f"layer {layer}\nstep", fontsize=8)
    axes[-1, 0].set_xlabel("token index in the first probe sample (prompt, latent chunks, supervised text)")
    fig.suptitle("token-wise gradient norm per layer over training steps (blank = exactly 0)", fontsize=9)
    return base.save_figure(fig, path)


def draw_means(report: dict[str, Any], path: Path) -> Path:
    tn = report["token_norms"]
    n_layers = report["layers"]
    cols = min(4, n_layers)
    rows = (n_layers + cols - 1) // cols
    fig, axes = base.figure(rows, cols, (3.0 * cols, 2.5 * rows), sharex=True)
    steps = list(range(report["steps"]))
    for li in range(rows * cols):
        ax = axes[li // cols, li % cols]
        if li >= n_layers:
            ax.axis("off")
            continue
        for k in SHOWN_KINDS:
            ys = tn["mean"][str(li)][k]
            if all(y is None or y != y for y in ys):
                continue
            ax.plot(
                steps, ys, color=base.COLORS[k], label=k, lw=1.6, ls="-" if k in ("visual", "text") else "--"
            )
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_title(f"layer {li}", fontsize=8)
        ax.grid(True, ls="--", alpha=0.3)
    axes[0, 0].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle("mean token-wise gradient norm by token kind (probe batch)", fontsize=9)
    return base.save_figure(fig, path)


def draw_nuclear(report: dict[str, Any], path: Path) -> Path:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    nu = report["nuclear"]
    steps = nu["steps"]
    n_layers = report["layers"]
    colors = {"q": "orange", "k": "#C44E52", "v": "green", "o": "#8A7090"}
    fig, axes = base.figure(2, 2, (10, 6.4))
    for j, g in enumerate(("easy", "hard")):
        ax = axes[0, j]
        for p in PROJS:
            total = np.zeros(len(steps))
            for li in range(n_layers):
                total += np.array(nu[g][str(li)][p]["A"]) + np.array(nu[g][str(li)][p]["B"])
            ax.plot(steps, total / n_layers, "s-", color=colors[p], label=f"{p.upper()} proj", lw=2, ms=4)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"{g}: mean over layers of ‖∇W_A‖* + ‖∇W_B‖*", fontsize=9)
        ax.set_xlabel("step")
        ax.grid(True, ls="--", alpha=0.3)
        ax.legend(fontsize=7)
        heat = np.array(
            [
                [sum(nu[g][str(li)][p][ab][s] for p in PROJS for ab in "AB") for s in range(len(steps))]
                for li in range(n_layers)
            ]
        )
        im = axes[1, j].imshow(
            heat,
            aspect="auto",
            cmap="viridis",
            origin="lower",
            extent=(steps[0] - 0.5, steps[-1] + 0.5, -0.5, n_layers - 0.5),
        )
        fig.colorbar(im, ax=axes[1, j], pad=0.01)
        axes[1, j].set_yticks(range(n_layers))
        axes[1, j].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[1, j].set_ylabel("layer")
        axes[1, j].set_xlabel("step")
        axes[1, j].set_title(f"{g}: Σ over q/k/v/o and A/B per layer", fontsize=9)
    share = [axes[0, 0], axes[0, 1]]
    lo = min(a.get_ylim()[0] for a in share)
    hi = max(a.get_ylim()[1] for a in share)
    for a in share:
        a.set_ylim(lo, hi)
    eh = report["easy_hard"]
    fig.suptitle(
        f"LoRA gradient nuclear norms, easy vs hard (split at step {eh['evaluated_at_step']} by "
        f"{eh['rule']})",
        fontsize=9,
    )
    return base.save_figure(fig, path)


# --- the command -----------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (see configs/); overrides may follow")
    parser.add_argument(
        "--steps", type=int, default=20, help="optimizer steps to train and measure (default: 20)"
    )
    parser.add_argument("--out", required=True, help="output directory for the PNG and JSON files")
    parser.add_argument(
        "--probe-after", type=int, default=2, help="steps before the easy/hard validation split (default: 2)"
    )
    parser.add_argument(
        "--probe-size",
        type=int,
        default=4,
        help="samples in each probe batch: tokens, easy, hard (default: 4)",
    )
    parser.add_argument(
        "--val-split", default="test", help="split the easy/hard evaluation reads (default: test)"
    )
    parser.add_argument("--val-n", type=int, default=16, help="validation records evaluated (default: 16)")
    parser.add_argument(
        "--easy-hard",
        default="correct",
        choices=["correct", "loss"],
        help="correct: easy = answered correctly (falls back to loss if a group is empty); loss: lower half",
    )
    parser.add_argument(
        "--heatmap-layers", default="auto", help="layers in the token heatmap: auto (≤4 spread) or e.g. 0,3,7"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.epilog = (
        "Any training config field can follow as --section.field VALUE (as for `vedas train`), e.g. "
        "--data.path data/synth --optim.batch_size 4."
    )
    parser.set_defaults(func=base.run_command("gradients", run), overrides=[])


def run(args: argparse.Namespace) -> int:
    report = measure(args)
    out = Path(args.out)
    paths = [
        draw_heatmap(report, out / "token_grad_heatmap.png"),
        draw_means(report, out / "token_grad_means.png"),
        draw_nuclear(report, out / "lora_nuclear_norms.png"),
        base.write_json(out / "gradients.json", report),
    ]
    _print(report)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _avg(xs: list[float | None]) -> float:
    vals = [x for x in xs if x is not None and x == x]
    return sum(vals) / len(vals) if vals else float("nan")


def _print(report: dict[str, Any]) -> None:
    tn = report["token_norms"]["mean"]
    for li in range(report["layers"]):
        parts = [f"{k} {_avg(tn[str(li)][k]):.3g}" for k in SHOWN_KINDS]
        print(f"layer {li}: mean token gradient norm over steps: " + ", ".join(parts))
    nu = report["nuclear"]
    for g in ("easy", "hard"):
        sums = [
            sum(nu[g][str(li)][p][ab][s] for li in range(report["layers"]) for p in PROJS for ab in "AB")
            for s in range(len(nu["steps"]))
        ]
        print(f"{g}: Σ LoRA q/k/v/o gradient nuclear norms per step: " + ", ".join(f"{v:.3g}" for v in sums))
