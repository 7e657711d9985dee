"""``vedas demo --ablation --merge A/ablation.json B/ablation.json --out DIR``: one ablation report from saved ones.

The seeds of one ablation are often trained by different processes, machines or sessions, and the
units on disk (checkpoints, per-question outcomes) do not always outlive them. A saved
``ablation.json`` keeps every run's accuracy (each row's ``accuracies`` by ``(seed, replicate)``)
and, per latent-use condition, each run's accuracy: all that the seed-level intervals need. This
merges such reports: rows, seed-level comparisons, latent-use drops, verdicts and the run-to-run
spread are recomputed over the union of their runs, and written as ``ablation.{json,md,png}`` under
``--out``.

What a merge cannot recompute is a question-level interval: it needs the per-question outcomes,
which a report does not save. With one report (a rebuild: new seed-level statistics over an old
report) they are kept as saved; with several they are left out, and the report says so.

Refused, naming the file and the field: a file that is not an ablation report, reports of other
settings (sizes, benchmark) or another ``--cot-min``, a run that two reports both hold, and an
``--out`` whose ``ablation.json`` is one of the inputs (nothing is overwritten that a merge reads).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from vedas.analysis.latent_use import from_runs
from vedas.errors import UserError
from vedas.experiments import ablation

REQUIRED = ("methods", "comparisons", "latent_use", "settings", "seeds", "cot_min", "preset")
"""The fields of ``ablation.json`` a merge reads."""


def load(path: Path) -> dict[str, Any]:
    """One saved report; a clear error for a missing file, bad JSON or a file that is no ablation report."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--merge: {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"--merge: {path} is not JSON ({e})") from None
    missing = [k for k in REQUIRED if not isinstance(report, dict) or k not in report]
    if missing:
        raise UserError(f"--merge: {path} is not an ablation report (no {', '.join(missing)})")
    return report


def _differing(a: Any, b: Any, where: str = "") -> str | None:
    """The first field (dotted path) where two settings differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}{k}"
            found = _differing(a[k], b[k], f"{where}{k}.")
            if found:
                return found
        return None
    return None if a == b else where.rstrip(".")


def check_compatible(paths: list[Path], reports: list[dict[str, Any]]) -> None:
    """Every report of the same settings and ``--cot-min`` as the first; errors name the file and field."""
    first = reports[0]
    for path, r in zip(paths[1:], reports[1:]):
        field = _differing(first["settings"], r["settings"])
        if field is not None:
            raise UserError(f"--merge: {path} was run with other settings than {paths[0]}: `{field}` differs")
        if r["cot_min"] != first["cot_min"]:
            raise UserError(
                f"--merge: {path} excluded cots below {r['cot_min']}, {paths[0]} below {first['cot_min']}"
            )


def merge_rows(name: str, parts: list[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    """One variant's row over the runs of every report that has it (a run in two reports: an error).

    Steps, latency, train time and per-question-type accuracy are saved as means over a report's
    runs; each run is given its report's means, so the merged ones are means over all runs."""
    reps: dict[tuple[int, int], dict[str, Any]] = {}
    owner: dict[tuple[int, int], Path] = {}
    for path, row in parts:
        unit_seconds = row.get("unit_seconds") or [0.0] * len(row["accuracies"])
        for (key, acc), seconds in zip(ablation.run_accuracies(row).items(), unit_seconds):
            if key in reps:
                raise UserError(
                    f"--merge: `{name}` seed {key[0]} replicate {key[1]} is in both {owner[key]} and {path}"
                )
            owner[key] = path
            reps[key] = {
                "accuracy": acc,
                "ar_steps_mean": row["ar_steps_mean"],
                "latency_ms": row["latency_ms"],
                "train_seconds": row.get("train_seconds", 0.0),
                "unit_seconds": seconds,
                "n": row["n"],
                "per_category": {c: {"accuracy": a} for c, a in (row.get("per_category") or {}).items()},
            }
    return ablation.summary_row(name, reps)


def merge_latent_use(name: str, parts: list[dict[str, Any]], keep_drops: bool) -> dict[str, Any]:
    """One latent-use (or remedy) row over every report's runs: the conditions all of them probed."""
    conds = [c for c in parts[0]["accuracy_per_seed"] if all(c in p["accuracy_per_seed"] for p in parts)]
    runs: list[Any] = []
    per_seed: dict[str, list[float]] = {c: [] for c in conds}
    for p in parts:
        runs += [tuple(s) if isinstance(s, list) else s for s in p["seeds"]]
        for c in conds:
            per_seed[c] += p["accuracy_per_seed"][c]
    order = sorted(range(len(runs)), key=lambda i: runs[i])
    per_seed = {c: [v[i] for i in order] for c, v in per_seed.items()}
    sweeps = [({s["latents"]: s["accuracy"] for s in p["sweep"]}, len(p["seeds"])) for p in parts]
    row = from_runs(
        name, [runs[i] for i in order], per_seed, sweeps, parts[0]["drop"] if keep_drops else None
    )
    extra = {k: v for k, v in parts[0].items() if k in ("remedy", "applied_to", "help")}
    return {**row, **extra}


def _by(key: str, reports: list[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        for row in r.get(field) or []:
            out.setdefault(row[key], []).append(row)
    return out


def merge_comparisons(
    methods: list[dict[str, Any]], saved: list[dict[str, Any]] | None
) -> list[dict[str, Any]]:
    """Every comparison both of whose variants have rows, with its seed-level interval over the merged
    runs; ``saved`` (one report's comparisons) lends its question-level intervals, which a merge of
    several reports cannot recompute."""
    names = {m["method"] for m in methods}
    question = {(c["a"], c["b"]): c for c in saved or []}
    kept = ("difference", "low", "high", "n", "level", "resamples", "seed")
    comparisons = [
        {"a": a, "b": b, "what": what, **{k: v for k, v in question.get((a, b), {}).items() if k in kept}}
        for a, b, what in ablation.COMPARISONS + ablation.REMEDY_COMPARISONS + ablation.OPTION_COMPARISONS
        if a in names and b in names
    ]
    return [
        c for c in ablation.with_seed_level(methods, comparisons) if c["seed_level"] is not None or "low" in c
    ]


def merge_meta(paths: list[Path], reports: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The report's header: the first report's settings, every report's seeds, times and loads."""
    first = reports[0]
    loads = [r.get("units_load_average") or [0.0, 0.0] for r in reports]
    return {
        "machine": "; ".join(dict.fromkeys(str(r.get("machine", "?")) for r in reports)),
        "load_start": first.get("load_start", 0.0),
        "load_end": reports[-1].get("load_end", 0.0),
        "preset": first["preset"],
        "synth": first.get("synth", {}),
        "size_line": first.get("size_line", ""),
        "seeds": sorted({int(s) for r in reports for s in r["seeds"]}),
        "elapsed_seconds": seconds,
        "units_seconds_total": sum(r.get("units_seconds_total", 0.0) for r in reports),
        "units_load_average": [min(x[0] for x in loads), max(x[1] for x in loads)],
        "settings": first["settings"],
        "merged_from": [{"file": str(p), "seeds": r["seeds"]} for p, r in zip(paths, reports)],
        "question_level": len(reports) == 1,
    }


def merge(paths: list[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The summary and the report metadata of the saved reports at ``paths``, merged."""
    t0 = time.perf_counter()
    reports = [load(p) for p in paths]
    check_compatible(paths, reports)
    single = len(reports) == 1
    rows: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path, r in zip(paths, reports):
        for row in r["methods"]:
            rows.setdefault(row["method"], []).append((path, row))
    methods = [merge_rows(n, rows[n]) for n in ablation.ALL_VARIANTS if n in rows]
    latent = _by("method", reports, "latent_use")
    remedies = _by("remedy", reports, "remedies")
    summary = {
        "cot_min": reports[0]["cot_min"],
        "excluded_cots": sorted(
            (e for r in reports for e in r.get("excluded_cots", [])), key=lambda e: e["seed"]
        ),
        "methods": methods,
        "comparisons": merge_comparisons(methods, reports[0]["comparisons"] if single else None),
        "latent_use": [merge_latent_use(n, latent[n], single) for n in ablation.ALL_VARIANTS if n in latent],
        "remedies": [merge_latent_use(parts[0]["method"], parts, single) for parts in remedies.values()],
        "paper_table3": reports[0].get("paper_table3", []),
    }
    return summary, merge_meta(paths, reports, time.perf_counter() - t0)


def run(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.merge]
    out = Path(args.out)
    target = (out / "ablation.json").resolve()
    if any(p.resolve() == target for p in paths):
        raise UserError(
            f"--merge: --out {out} would overwrite {out / 'ablation.json'}, which the merge reads; give another --out"
        )
    summary, meta = merge(paths)
    out.mkdir(parents=True, exist_ok=True)
    print(ablation.save(out, summary, meta))
    return 0
