"""The JSONL ``vedas eval`` appends per batch beside its report, and what ``--resume`` continues from.

    log = ResultLog.open(Path("report.jsonl"), header, resume=False)
    evaluate(vm, records, ..., log=log)      # appends one line per batch, then a "done" line

Line 1 is the header: the settings that decide the results (checkpoint, data, method, batch size,
scoring, latents, …, and the record ids in order). Then one line per batch, written as soon as it
is scored: its per-sample rows, the records it skipped, its TTO record and the latent count run.
The last line, ``{"done": true}``, marks a finished evaluation.

``--resume`` reads the batches of an unfinished file and evaluation continues with the next one;
the batches are the same (same records, same order, same batch size), so the report equals an
uninterrupted run's, latency aside. A resume whose settings differ is refused, naming each one
that differs; a fresh run never overwrites an unfinished file that holds results (it says to
resume or delete it).
A line cut short by a kill is dropped, and its batch runs again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

from vedas.errors import UserError
from vedas.files import atomic_write_text


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # the last line of a killed run: its batch is redone
            break
    return out


class ResultLog:
    """The per-batch results file of one evaluation (module docstring)."""

    def __init__(self, path: Path, header: dict[str, Any], batches: list[dict[str, Any]]) -> None:
        self.path = path
        self.header = header
        self.batches = batches
        """The batches already scored (read back on ``--resume``), in order."""
        self._file: IO[str] | None = None

    @classmethod
    def open(cls, path: Path, header: dict[str, Any], resume: bool) -> ResultLog:
        """Start ``path`` afresh, or with ``resume`` read its batches back; refuses what would mix runs."""
        lines = _lines(path) if path.is_file() else []
        finished = bool(lines) and lines[-1].get("done") is True
        batches = [x for x in lines[1:] if "batch" in x]
        if not resume:
            if batches and not finished:
                raise UserError(
                    f"{path} holds {len(batches)} batches of an unfinished evaluation: continue it with "
                    "--resume, or delete the file to start again"
                )
            return cls._start(path, header, [])
        if not lines:
            raise UserError(f"--resume: {path} does not exist or is empty: nothing to resume")
        saved = lines[0].get("header") or {}
        diff = [
            f"{k}: saved {saved.get(k)!r}, now {header.get(k)!r}"
            for k in sorted(set(saved) | set(header))
            if saved.get(k) != header.get(k)
        ]
        if diff:
            shown = [
                d if not d.startswith("ids:") else "ids: the records or their order differ" for d in diff
            ]
            raise UserError(f"--resume: {path} was written by a different evaluation; {'; '.join(shown)}")
        if [b["batch"] for b in batches] != list(range(len(batches))):
            raise UserError(f"--resume: {path} has its batches out of order; delete it to start again")
        return cls._start(path, header, batches)  # all of them when finished: the report is rebuilt

    @classmethod
    def _start(cls, path: Path, header: dict[str, Any], batches: list[dict[str, Any]]) -> ResultLog:
        """Rewrite ``path`` as the header and ``batches`` (dropping any cut-off line), then append from there."""
        atomic_write_text(path, "".join(json.dumps(x) + "\n" for x in [{"header": header}, *batches]))
        log = cls(path, header, batches)
        log._file = open(path, "a")  # noqa: SIM115 - appended to batch by batch, closed by finish()
        return log

    def append(self, batch: dict[str, Any]) -> None:
        """Write one scored batch (``{"batch": i, "rows", "skipped", "tto", "latents"}``) and flush it."""
        assert self._file is not None
        self._file.write(json.dumps(batch) + "\n")
        self._file.flush()
        self.batches.append(batch)

    def finish(self) -> None:
        if self._file is not None:
            self._file.write(json.dumps({"done": True}) + "\n")
            self._file.close()
            self._file = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


__all__ = ["ResultLog"]
