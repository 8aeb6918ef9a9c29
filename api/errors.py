"""API errors: one JSON shape `{"error": {"code", "message", "detail"?}}` for every failure."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            err["detail"] = self.detail
        return {"error": err}


def not_found(what: str = "scan") -> ApiError:
    # the same answer for "does not exist" and "belongs to another tenant": no existence oracle
    return ApiError(404, "not_found", f"{what} not found")
