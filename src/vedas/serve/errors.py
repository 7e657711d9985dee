"""The errors a request can get: an HTTP status and an OpenAI error object naming the field.

Its own module so that the request parser (:mod:`vedas.serve.protocol`) and the media loader
(:mod:`vedas.serve.media`), which the parser calls, both raise them without importing each other.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A refused request: HTTP ``status`` and an OpenAI error object naming ``param``."""

    def __init__(
        self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


def bad(param: str, message: str) -> ApiError:
    """A 400 naming ``param``; the message starts with the field, as every error of vedas does."""
    return ApiError(400, f"{param}: {message}", param)


__all__ = ["ApiError", "bad"]
