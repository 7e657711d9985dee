"""The errors a user can cause and fix: bad config, data, paths, checkpoints, inputs.

    from vedas.errors import UserError
    raise CheckpointError(f"{path}: model/config.json is missing")

Each is a :class:`UserError` whose message names the file, row, field or argument at fault. The
``vedas`` command line (:func:`vedas.cli.main`) prints such an error as one line and exits 2;
any other exception is a bug and keeps its traceback. They stay ``ValueError`` subclasses, so
code that caught ``ValueError`` before still does.
"""

from __future__ import annotations


class UserError(ValueError):
    """An expected error the user can fix; its message alone says what and where."""


class CheckpointError(UserError):
    """A checkpoint path or file that cannot be loaded: missing, truncated, not a checkpoint."""


class InputError(UserError):
    """A bad argument to ``VedasModel.generate``/``prepare`` (or a bad record): names it.

    ``index`` is the sample's position in the batch when one sample is at fault, so callers that
    know the records (:meth:`vedas.model.VedasModel.generate_records`) can name the record instead;
    ``record_id`` is then that record's id.
    """

    def __init__(self, message: str, index: int | None = None, record_id: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.record_id = record_id


__all__ = ["CheckpointError", "InputError", "UserError"]
