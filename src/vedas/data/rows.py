"""Turning raw rows into records: field access that names the field and row, skip accounting.

Each dataset module reads its files into :class:`Row` objects and hands them, with a
function that maps one row to a :class:`~vedas.data.record.Record`, to :func:`collect`.
``collect`` owns the policy shared by every loader:

- a :class:`~vedas.data.record.SkipRow` (left out by design) is counted under its reason;
- a :class:`~vedas.data.record.DataError` (a bad row) is raised, or, with
  ``skip_bad=True``, counted under its kind and remembered in ``Dataset.skipped_rows``;
- duplicate ids are bad rows too (evaluation reports key on ids);
- ``limit`` stops reading once that many records are loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from vedas.data.record import DataError, Dataset, Record, SkipRow

_MISSING = object()


class Row:
    """One raw row with what an error message needs: dataset, row id and file position."""

    def __init__(
        self,
        data: Mapping[str, Any],
        *,
        source: str,
        where: str,
        row_id: str | None = None,
        id_field: str = "id",
    ) -> None:
        self.data = data
        self.source = source
        self.where = where
        self.invalid: DataError | None = None  # set when the raw line itself could not be parsed
        raw_id = row_id if row_id is not None else data.get(id_field)
        # Before the id is known to be good, errors name the row by its position in the file.
        self.id = str(raw_id) if raw_id not in (None, "") else where

    def error(self, kind: str, detail: str) -> DataError:
        location = "" if self.id == self.where else f" ({self.where})"
        return DataError(kind, f"{self.source} row {self.id!r}{location}: {detail}", self.id)

    def get(self, *names: str, default: Any = _MISSING) -> Any:
        """The first of ``names`` present and not None (datasets rename columns between forms)."""
        for name in names:
            value = self.data.get(name)
            if value is not None:
                return value
        if default is _MISSING:
            alternatives = f" (or {', '.join(repr(n) for n in names[1:])})" if len(names) > 1 else ""
            raise self.error("missing_field", f"missing required field {names[0]!r}{alternatives}")
        return default

    def text(self, *names: str, required: bool = True) -> str:
        """A string field, stripped; required fields must be non-empty."""
        value = self.get(*names, default=_MISSING if required else "")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise self.error("bad_field", f"field {names[0]!r} must be a string, got {type(value).__name__}")
        value = value.strip()
        if required and not value:
            raise self.error("missing_field", f"required field {names[0]!r} is empty")
        return value

    def strings(self, *names: str) -> list[str]:
        """A list-of-strings field (choices, image paths)."""
        value = self.get(*names)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise self.error("bad_field", f"field {names[0]!r} must be a list, got {type(value).__name__}")
        out = []
        for item in value:
            if not isinstance(item, (str, int, float)):
                raise self.error("bad_field", f"field {names[0]!r} holds a {type(item).__name__}: {item!r}")
            out.append(str(item).strip())
        return out


def collect(
    name: str,
    split: str,
    rows: Iterable[Row],
    convert: Callable[[Row], Record],
    *,
    limit: int | None = None,
    skip_bad: bool = False,
    path: str | None = None,
) -> Dataset:
    """Convert rows to records with the shared skip/limit/duplicate policy (module docstring)."""
    dataset = Dataset(name, split, path)
    seen: set[str] = set()
    for row in rows:
        dataset.summary["read"] += 1
        try:
            if row.invalid is not None:
                raise row.invalid
            record = convert(row)
            if record.id in seen:
                raise row.error("duplicate_id", f"id {record.id!r} appears more than once")
        except SkipRow as skip:
            dataset.skip(skip.reason, f"{name} row {row.id!r}: {skip.reason}", row.id)
            continue
        except DataError as err:
            if not skip_bad:
                raise
            dataset.skip(err.kind, str(err), err.row_id or row.id)
            continue
        seen.add(record.id)
        dataset.append(record)
        if limit is not None and len(dataset) >= limit:
            break  # before the next row is even read
    dataset.summary["loaded"] = len(dataset)
    return dataset
