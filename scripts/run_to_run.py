"""Copy an ablation's run-to-run spread into the package, where ``vedas demo`` quotes it.

    python scripts/run_to_run.py docs/results/ablation_fine.json

Writes ``src/vedas/experiments/run_to_run.json``: the ablation's ``run_to_run`` section (per
comparison, the SD of a one-run difference between reruns) and the report it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = Path(__file__).resolve().parents[1] / "src" / "vedas" / "experiments" / "run_to_run.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path, help="an ablation.json written by `vedas demo --ablation`")
    args = parser.parse_args()
    saved = json.loads(args.report.read_text())
    if "run_to_run" not in saved:
        raise SystemExit(f"{args.report}: no run_to_run section (an ablation report from before replicates)")
    spread = {**saved["run_to_run"], "source": str(args.report), "seeds": saved.get("seeds")}
    TARGET.write_text(json.dumps(spread, indent=1) + "\n")
    print(f"wrote {TARGET}: {len(spread['comparisons'])} comparisons on preset {spread['preset']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
