"""Finding and reading raw dataset files: split files in a folder, and rows out of a file.

Datasets arrive as a Hugging Face snapshot (``data/test-00000-of-00001.parquet``), as the
authors' raw release (``data/test.jsonl``), or as a single file a user points at.
:func:`split_files` finds the files of one split in a folder from a list of glob patterns;
:func:`rows_of` reads parquet (pyarrow, in batches), JSON Lines, a JSON list, or CSV into
:class:`~vedas.data.rows.Row` objects that remember the file and line for error messages.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from vedas.data.record import DataError
from vedas.data.rows import Row
from vedas.errors import UserError

READABLE = (".parquet", ".jsonl", ".json", ".csv")


def split_files(root: Path, patterns: Sequence[str]) -> list[Path]:
    """Files under ``root`` matching the first pattern that matches anything (sorted).

    Raises FileNotFoundError listing every pattern tried.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset path does not exist: {root}")
    for pattern in patterns:
        found = sorted(p for p in root.glob(pattern) if p.is_file())
        if found:
            return found
    raise FileNotFoundError(f"no data file in {root}; looked for: {', '.join(patterns)}")


def rows_of(path: Path, source: str, id_field: str = "id") -> Iterator[Row]:
    """Rows of one file; ``where`` in each row is ``<file name>:<line or row number>``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _parquet(path, source, id_field)
    elif suffix == ".jsonl":
        yield from _jsonl(path, source, id_field)
    elif suffix == ".json":
        yield from _json_list(path, source, id_field)
    elif suffix == ".csv":
        yield from _csv(path, source, id_field)
    else:
        raise UserError(f"{source}: cannot read {path}: expected one of {', '.join(READABLE)}")


def _parquet(path: Path, source: str, id_field: str) -> Iterator[Row]:
    import pyarrow.parquet as pq

    index = 0
    # Batches keep memory flat on large tables with embedded images.
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
        for data in batch.to_pylist():
            yield Row(data, source=source, where=f"{path.name}[{index}]", id_field=id_field)
            index += 1


def _jsonl(path: Path, source: str, id_field: str) -> Iterator[Row]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield _invalid(source, where, "bad_json", f"not valid JSON: {exc}")
                continue
            if not isinstance(data, dict):
                yield _invalid(
                    source, where, "bad_json", f"expected a JSON object, got {type(data).__name__}"
                )
                continue
            yield Row(data, source=source, where=where, id_field=id_field)


def _json_list(path: Path, source: str, id_field: str) -> Iterator[Row]:
    data = read_json(path, source)
    if not isinstance(data, list):
        raise DataError(
            "bad_json", f"{source}: {path} must hold a JSON list of rows, got {type(data).__name__}"
        )
    for index, item in enumerate(data):
        where = f"{path.name}[{index}]"
        if not isinstance(item, dict):
            yield _invalid(source, where, "bad_json", f"expected a JSON object, got {type(item).__name__}")
            continue
        yield Row(item, source=source, where=where, id_field=id_field)


def _csv(path: Path, source: str, id_field: str) -> Iterator[Row]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        # Line 1 is the header, so data row n sits on line n + 1.
        for number, data in enumerate(csv.DictReader(f), start=2):
            yield Row(data, source=source, where=f"{path.name}:{number}", id_field=id_field)


def read_json(path: Path, source: str) -> object:
    """A whole JSON file; a syntax error names the file and position."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError("bad_json", f"{source}: {path} is not valid JSON: {exc}") from exc


def _invalid(source: str, where: str, kind: str, detail: str) -> Row:
    row = Row({}, source=source, where=where)
    row.invalid = row.error(kind, detail)
    return row
