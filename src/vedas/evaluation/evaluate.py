"""``vedas eval``: accuracy, autoregressive steps and latency, measured honestly.

    vedas eval --checkpoint runs/demo/vedas --data synthetic:data/synth --split test \\
        --method vedas --batch-size 8 --scoring vedas --out report.json

Writes the JSON report and a Markdown table beside it (``report.md``), and, batch by batch as it
goes, ``report.jsonl`` (:mod:`vedas.evaluation.results`): an interrupted evaluation continues
from it with ``--resume`` and gives the report an uninterrupted one would (latency aside).

Data parallel, one process per GPU (or CPU process), on one node or several:

    torchrun --nproc_per_node 8 -m vedas.cli eval --checkpoint ... --out report.json

Each rank evaluates its own batches (:mod:`vedas.evaluation.shards`) into its own log,
``report.rank{R}-of-{N}.jsonl`` (``--resume`` continues each shard), on ``cuda:LOCAL_RANK``; rank 0
gathers the ranks' rows and writes one report, equal to the one-process report (the same per-sample
rows, in order, each once; the latency means over all samples) and recording ``world_size``.

``{"method", "dataset", "n", "accuracy", "scoring_rule", "ar_steps_mean", "latency_ms":
{"prefill", "latent", "decode", "total"}, "batch_size", "latents", "device", "per_sample":
[{"id", "prediction", "answer", "correct", "ar_steps", "latency_ms"}], "n_skipped", "skipped":
[{"id", "reason", "message"}], ...}`` — ``n`` counts only what was scored; with ``--skip-bad``
every record left out, at load time or because the model could not take it, is in ``skipped``.

How it measures, unlike the reference code (no warm-up, no sync, batch 1, lenient regex):

- one untimed warm-up batch first; CUDA is synchronised before every clock read;
- each batch's prefill / latent / decode wall time is split evenly over its samples, so the
  ``latency_ms`` means are per sample at the batch size used (which the report records);
- AR steps = sequential forward passes after the prefill: latent chunks + generated tokens;
- scoring by a named rule (default ``vedas``: the last "the answer is X", one letter only);
- the latent count is the checkpoint's unless ``--latents`` overrides it, and is recorded;
- ``--tto stage1,stage2`` optimises the latents per batch at inference (:mod:`vedas.method.tto`); the
  report then has ``latency_ms["tto"]`` (included in ``total``) and ``tto`` (settings, mean
  loss before and after each stage, extra latent passes per batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vedas import cli_args
from vedas.errors import UserError

if TYPE_CHECKING:
    import torch

HELP = "accuracy, AR steps and latency of a checkpoint on a dataset (report.json + report.md)"
CATEGORY_KEYS = ("category", "domain", "l2_category", "topic")


def device_name(device: torch.device) -> str:
    import torch  # here, not at the top: `vedas eval --help` should not load torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _category(record: Any) -> str | None:
    for key in CATEGORY_KEYS:
        value = record.meta.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def evaluate(
    vm: Any,
    records: list[Any],
    method: str = "vedas",
    batch_size: int = 8,
    scoring: str = "vedas",
    latents: int | None = None,
    max_new_tokens: int | None = None,
    dataset: str = "",
    warmup: bool = True,
    progress: bool = True,
    engine: str = "cached",
    tto: Any = None,
    skip_bad: bool = False,
    log: Any = None,
) -> dict[str, Any]:
    """Run ``vm.generate_records`` over ``records`` in batches and score each prediction.

    ``tto``: a :class:`vedas.method.tto.TTOConfig` to optimise the latents at inference (weights frozen).
    ``skip_bad``: a record the model cannot take (an input error naming it) is skipped instead of
    stopping the run. The report's ``n`` counts what was scored; ``skipped`` lists every record left
    out, at load time (when ``records`` is a :class:`~vedas.data.record.Dataset`) or here, with its
    reason.
    ``log``: a :class:`vedas.evaluation.results.ResultLog`; each batch is appended to it as soon as it
    is scored, and the batches it already holds (a resumed evaluation) are taken from it, not re-run.
    """
    from vedas.evaluation.scoring import get_rule

    get_rule(scoring)  # an unknown rule fails before any compute
    if batch_size < 1:
        raise UserError(f"batch_size: must be ≥ 1, got {batch_size}")
    if not records:
        raise UserError("records: nothing to evaluate")

    def run(batch: list[Any]) -> Any:
        return vm.generate_records(
            batch,
            mode=method,
            latents=latents,
            engine=engine,
            return_details=True,
            max_new_tokens=max_new_tokens,
            tto=tto,
        )

    skipped = [dict(r) for r in getattr(records, "skipped_rows", [])]
    done = log.batches if log is not None else []
    if warmup and len(done) * batch_size < len(records):
        Generator(run, vm, method, skip_bad)(list(records[:batch_size]))
    batches = _run_batches(
        Generator(run, vm, method, skip_bad),
        list(records),
        batch_size,
        scoring,
        progress,
        f"eval {method}",
        log,
    )
    if log is not None:
        log.finish()
    skipped += [row for b in batches for row in b["skipped"]]
    settings = {"method": method, "dataset": dataset, "scoring_rule": scoring, "batch_size": batch_size}
    return _report(vm, batches, skipped, len(records), settings, engine, tto)


def _report(
    vm: Any,
    batches: list[dict[str, Any]],
    skipped: list[dict[str, Any]],
    n_records: int,
    settings: dict[str, Any],
    engine: str,
    tto: Any,
) -> dict[str, Any]:
    """The report of scored ``batches`` (keys in the order the JSON has always had)."""
    per_sample = [row for b in batches for row in b["rows"]]
    tto_runs = [b["tto"] for b in batches if b["rows"]]
    used_latents = next((b["latents"] for b in reversed(batches) if b["rows"]), 0)
    n = len(per_sample)
    if not n:
        raise UserError(
            f"records: none of the {n_records} records could be evaluated; skipped: {skipped[:3]}"
        )
    return {
        "method": settings["method"],
        "dataset": settings["dataset"],
        "n": n,
        "accuracy": sum(s["correct"] for s in per_sample) / n,
        "scoring_rule": settings["scoring_rule"],
        "ar_steps_mean": sum(s["ar_steps"] for s in per_sample) / n,
        "latency_ms": _mean_latency(per_sample, with_tto=tto is not None),
        "batch_size": settings["batch_size"],
        "latents": used_latents,
        "device": device_name(vm.device),
        "engine": engine,
        "tto": None if tto is None else _tto_report(tto, tto_runs),
        "per_category": _per_category(per_sample),
        "n_skipped": len(skipped),
        "skipped": skipped,
        "per_sample": per_sample,
    }


class Generator:
    """One batch through ``run``; with ``skip_bad`` a batch that fails on one record's input retries
    without the records that fail on their own (each one recorded in ``skipped`` with its reason)."""

    def __init__(self, run: Any, vm: Any, method: str, skip_bad: bool) -> None:
        self.run, self.vm, self.method, self.skip_bad = run, vm, method, skip_bad
        self.skipped: list[dict[str, Any]] = []

    def __call__(self, batch: list[Any]) -> tuple[list[Any], Any]:
        """(the records run, their details); details None when every record was skipped."""
        from vedas.errors import InputError

        try:
            return batch, self.run(batch)
        except InputError:
            if not self.skip_bad:
                raise
            bad = self.failing(batch)
            if not bad:
                raise
        self.skipped += [{"id": rid, "reason": "bad_input", "message": msg} for rid, msg in bad.items()]
        rest = [r for r in batch if r.id not in bad]
        return (rest, self.run(rest)) if rest else ([], None)

    def failing(self, batch: list[Any]) -> dict[str, str]:
        """The records of ``batch`` the model cannot take on their own: id -> the error."""
        from vedas.errors import InputError

        bad = {}
        for r in batch:
            try:
                self.vm.prepare_records([r], mode=self.method)
            except InputError as e:
                bad[r.id] = str(e)
        return bad


def _run_batches(
    gen: Generator,
    records: list[Any],
    batch_size: int,
    scoring: str,
    progress: bool,
    desc: str,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Every batch through ``gen`` (those ``log`` already holds are taken from it): per batch its
    per-sample rows, the records it skipped, its TTO record and the latent count run.

    Only these are kept, not the batches' details (their latents would pile up on the device).
    """
    from tqdm.auto import tqdm

    # the log's own list: what it holds already, and each batch as it appends it
    batches: list[dict[str, Any]] = log.batches if log is not None else []
    starts = range(0, len(records), batch_size)
    bar = tqdm(
        total=len(records),
        initial=min(len(batches) * batch_size, len(records)),
        disable=not progress,
        desc=desc,
    )
    for i, start in enumerate(starts[len(batches) :], start=len(batches)):
        chunk = records[start : start + batch_size]
        before = len(gen.skipped)
        ran, d = gen(chunk)
        result = {
            "batch": i,
            "rows": [] if d is None else _sample_rows(ran, d, scoring),
            "skipped": gen.skipped[before:],
            "tto": None if d is None else d.tto,
            "latents": 0 if d is None else d.latents.shape[1],
        }
        if log is not None:
            log.append(result)
        else:
            batches.append(result)
        bar.update(len(chunk))
        scored = [r for b in batches for r in b["rows"]]
        if scored:
            bar.set_postfix(acc=f"{sum(r['correct'] for r in scored) / len(scored):.3f}")
    bar.close()
    return batches


def _sample_rows(batch: list[Any], d: Any, scoring: str) -> list[dict[str, Any]]:
    """One report row per sample; the batch's phase times are split evenly over its samples."""
    from vedas.evaluation.scoring import score

    share = {k: v / len(batch) for k, v in d.timings_ms.items()}
    share["total"] = sum(share.values())
    return [
        {
            "id": r.id,
            "prediction": text,
            "answer": r.answer,
            "correct": bool(score(text, r, scoring)),
            "ar_steps": steps,
            "latency_ms": dict(share),
            "category": _category(r),
        }
        for r, text, steps in zip(batch, d.texts, d.ar_steps)
    ]


def _mean_latency(per_sample: list[dict[str, Any]], with_tto: bool) -> dict[str, float]:
    phases = (
        ("prefill", "latent", "tto", "decode", "total")
        if with_tto
        else ("prefill", "latent", "decode", "total")
    )
    return {k: sum(s["latency_ms"][k] for s in per_sample) / len(per_sample) for k in phases}


def _per_category(per_sample: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_cat: dict[str, list[bool]] = defaultdict(list)
    for s in per_sample:
        if s["category"] is not None:
            by_cat[s["category"]].append(s["correct"])
    return {c: {"n": len(v), "accuracy": sum(v) / len(v)} for c, v in sorted(by_cat.items())}


def _tto_report(tto: Any, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The TTO settings, each stage's mean loss before and after, and the extra passes per batch."""
    from vedas.config import to_dict

    losses = [r["loss"] for r in runs]
    return {
        **to_dict(tto),
        "loss_before": {st: sum(h[st][0] for h in losses) / len(losses) for st in tto.stages},
        "loss_after": {st: sum(h[st][-1] for h in losses) / len(losses) for st in tto.stages},
        "passes_per_batch": sum(r["passes"] for r in runs) / len(runs),
    }


def markdown(reports: list[dict[str, Any]]) -> str:
    """A Table-1-style Markdown table of one or more reports."""
    lines = [
        "| method | dataset | n | accuracy | AR steps | latency ms (prefill / latent / decode / total) | latents | batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['method']} | {r['dataset']} | {r['n']} | {100 * r['accuracy']:.1f}% | {r['ar_steps_mean']:.1f} "
            f"| {lat['prefill']:.1f} / {lat['latent']:.1f} / {lat['decode']:.1f} / **{lat['total']:.1f}** "
            f"| {r['latents']} | {r['batch_size']} |"
        )
    cats = [r for r in reports if r.get("per_category")]
    for r in cats:
        lines += [
            "",
            f"Per category ({r['method']}, rule `{r['scoring_rule']}`):",
            "",
            "| category | n | accuracy |",
            "|---|---|---|",
        ]
        lines += [f"| {c} | {v['n']} | {100 * v['accuracy']:.1f}% |" for c, v in r["per_category"].items()]
    if reports:
        lines += ["", f"Scoring rule: `{reports[0]['scoring_rule']}`; device: {reports[0]['device']}."]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    out, md, _ = output_names(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    md.write_text(markdown([report]))
    return out, md


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli_args.add_checkpoint(parser)
    cli_args.add_data(parser, split="test", skip_bad=True)
    cli_args.add_method(parser, default="vedas")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default: 8)")
    parser.add_argument(
        "--scoring",
        default="vedas",
        help="scoring rule: vedas, m3cot, lmms_sqa, lmms_mcq, gqa (default: vedas)",
    )
    parser.add_argument("--latents", type=int, default=None, help="override the checkpoint's latent count")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens")
    cli_args.add_engine(parser)
    cli_args.add_device(parser)
    cli_args.add_inputs(parser)
    parser.add_argument(
        "--out", default="report.json", help="where to write the JSON (the .md goes beside it)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted evaluation from the JSONL beside --out (same settings)",
    )
    cli_args.add_tto(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vedas.data import load
    from vedas.data.registry import split_spec
    from vedas.evaluation import shards
    from vedas.evaluation.scoring import get_rule

    try:
        get_rule(args.scoring)
        from vedas.method.tto import from_args as tto_from_args

        tto = tto_from_args(args)
        rank, local_rank, world = shards.rank_world()
    except ValueError as e:
        print(f"vedas eval: {e}", file=sys.stderr)
        return 2
    results = output_names(args.out)[2]  # a colliding --out is refused before any work
    name, path = split_spec(args.data)
    records = load(name, path=path, split=args.split, limit=args.limit, skip_bad=args.skip_bad)
    if rank == 0:
        print(records.describe())
    from vedas.checkpoint import resolve

    resolve(args.checkpoint)  # a bad checkpoint fails before any results file is touched
    ranks = Ranks(rank, local_rank, world)
    if world > 1:
        results = shards.shard_log(results, rank, world)
        ranks.start()
    # rank 0 holds the lock of --out itself, so a one-process run into the same --out is refused too
    lock = lock_output(args.out, "" if rank == 0 else f".rank{rank}-of-{world}")
    try:
        return _run_locked(args, records, tto, name, results, ranks)
    finally:
        lock.release()
        ranks.stop()


class Ranks:
    """This process's place in a data-parallel ``vedas eval`` (:mod:`vedas.evaluation.shards`), and the
    one collective it needs: rank 0 gathering the ranks' scored batches."""

    def __init__(self, rank: int, local_rank: int, world: int) -> None:
        self.rank, self.local_rank, self.world = rank, local_rank, world

    def start(self) -> None:
        """A gloo group (CPU tensors only: one gather of Python objects, whatever the device). Its
        timeout is long because the fastest rank waits in the gather for the slowest shard to finish,
        which on a large benchmark can take far longer than torch's 30-minute default."""
        import datetime

        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(hours=24))

    def gather(self, batches: list[dict[str, Any]]) -> list[list[dict[str, Any]]] | None:
        """Every rank's batches at rank 0 (in rank order), None elsewhere; one process: its own."""
        if self.world == 1:
            return [batches]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(batches, out, dst=0)
        return out

    def stop(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def output_names(out: str | Path) -> tuple[Path, Path, Path]:
    """The report (``--out``), the Markdown table and the per-batch log (what ``--resume`` reads):
    ``X.json``, ``X.md``, ``X.jsonl``. An ``--out`` that is itself the table's or the log's name
    would be overwritten by the other, so it is refused."""
    path = Path(out)
    if path.suffix.lower() in (".md", ".jsonl"):
        raise UserError(
            f"--out {out}: the JSON report goes to --out and the table and per-batch log beside it "
            f"({path.stem}.md, {path.stem}.jsonl), so this name would overwrite one with another; "
            f"give a .json path such as {path.with_suffix('.json')}"
        )
    return path, path.with_suffix(".md"), path.with_suffix(".jsonl")


def lock_output(out: str | Path, shard: str = "") -> Any:
    """One ``vedas eval`` at a time per output (its three files): a second one into the same ``--out``
    used to finish too, leaving the report of one and the per-batch log of the other. ``shard``: the
    lock of a data-parallel rank's own log (ranks other than 0)."""
    from vedas.files import lock_file

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.with_suffix('').name}{shard}.vedas-eval.lock"
    return lock_file(
        lock,
        lambda owner: (
            f"--out {out}: another vedas eval (pid {owner}) is writing these results "
            f"(lock file {lock}); wait for it or choose another --out"
        ),
    )


def _run_locked(
    args: argparse.Namespace, records: Any, tto: Any, name: str, results: Path, ranks: Ranks
) -> int:
    import vedas
    from vedas.checkpoint import untrained_latents
    from vedas.evaluation import shards
    from vedas.evaluation.results import ResultLog

    mine = (
        records if ranks.world == 1 else shards.shard(list(records), args.batch_size, ranks.rank, ranks.world)
    )
    log = ResultLog.open(results, _header(args, tto, mine, ranks), resume=args.resume)
    if log.batches:
        print(f"resuming: {len(log.batches)} batches already in {results}")
    dataset = f"{name}/{args.split}"
    try:
        vm = vedas.load(
            args.checkpoint,
            device=shards.rank_device(args.device, ranks.local_rank),
            **cli_args.input_overrides(args),
        )
        warning = untrained_latents(
            vm.trained, args.method, vm.config.latents if args.latents is None else args.latents
        )
        if warning and ranks.rank == 0:
            print(f"vedas eval: {warning}", file=sys.stderr)
        if mine:  # a rank can have no batch at all (fewer batches than ranks)
            evaluate(
                vm,
                mine,
                args.method,
                args.batch_size,
                args.scoring,
                args.latents,
                args.max_new_tokens,
                dataset=dataset,
                engine=args.engine,
                tto=tto,
                skip_bad=args.skip_bad,
                log=log,
                progress=ranks.rank == 0,
            )
        else:
            log.finish()
    except KeyboardInterrupt:
        _interrupted(args, log, len(mine), results, ranks.world)
        return 130
    finally:
        log.close()
    gathered = ranks.gather(log.batches)
    if gathered is None:  # ranks other than 0: rank 0 writes the report
        return 0
    batches = shards.merge(gathered)
    skipped = [dict(r) for r in getattr(records, "skipped_rows", [])]
    skipped += [row for b in batches for row in b["skipped"]]
    settings = {"method": args.method, "dataset": dataset, "scoring_rule": args.scoring}
    report = _report(
        vm, batches, skipped, len(records), {**settings, "batch_size": args.batch_size}, args.engine, tto
    )
    report["world_size"] = ranks.world
    report["checkpoint"] = str(args.checkpoint)
    out, md = write(report, args.out)
    print(markdown([report]), end="")
    logs = (
        results
        if ranks.world == 1
        else f"the {ranks.world} shard logs {results.name.replace('rank0', 'rank*')}"
    )
    print(f"wrote {out}, {md} and {logs}")
    return 0


def _interrupted(args: argparse.Namespace, log: Any, n: int, results: Path, world: int) -> None:
    """Say how far the evaluation (this rank's shard) got and how to continue it."""
    import shlex

    done = min(len(log.batches) * args.batch_size, n)
    launch = ["vedas"] if world == 1 else ["torchrun", "--nproc_per_node", str(world), "-m", "vedas.cli"]
    again = shlex.join([*launch, *[a for a in getattr(args, "argv", []) if a != "--resume"], "--resume"])
    print(
        f"vedas eval: interrupted after {done} of {n} records; they are in {results}. "
        f"Continue with:\n  {again}",
        file=sys.stderr,
    )


def _header(args: argparse.Namespace, tto: Any, records: list[Any], ranks: Ranks) -> dict[str, Any]:
    """What decides an evaluation's results: a resume must match it (:mod:`vedas.evaluation.results`).
    A data-parallel rank's log also names its shard, so a resume with another world size is refused."""
    from vedas.config import to_dict

    keys = ("checkpoint", "data", "split", "limit", "method", "batch_size", "scoring", "latents")
    keys += ("max_new_tokens", "engine", "skip_bad", "min_pixels", "max_pixels", "truncate_context")
    header = {k: getattr(args, k) for k in keys}
    header["checkpoint"] = (
        str(Path(args.checkpoint).resolve()) if Path(args.checkpoint).exists() else args.checkpoint
    )
    header["tto"] = None if tto is None else to_dict(tto)
    header["ids"] = [r.id for r in records]
    if ranks.world > 1:  # only then: a one-process log written before sharding existed still resumes
        header["shard"] = f"rank {ranks.rank} of {ranks.world}"
    return header
