"""FastAPI dependencies, exposed as `Annotated` aliases (SettingsDep, DbSession, StoreDep, ...)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.errors import ApiError
from persistence.db import session_factory
from persistence.keys import Principal, authenticate
from persistence.settings import Settings
from persistence.storage import ObjectStore

bearer_scheme = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
api_key_scheme = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key, as an alternative header")


async def get_settings_dep(request: Request) -> Settings:  # async: no threadpool hop for a lookup
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def get_db(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.settings.effective_database_url)()
    try:
        yield session
    finally:
        session.close()


DbSession = Annotated[Session, Depends(get_db)]


async def get_store_dep(request: Request) -> ObjectStore:
    return request.app.state.store


StoreDep = Annotated[ObjectStore, Depends(get_store_dep)]


def get_principal(
    db: DbSession,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> Principal:
    presented = bearer.credentials if bearer is not None else api_key
    if not presented:
        raise ApiError(
            401,
            "unauthenticated",
            "missing API key (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = authenticate(db, presented)
    if principal is None:
        raise ApiError(401, "unauthenticated", "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return principal


def require_scope(scope: str):
    """A dependency that checks the caller's key has `scope` (403 otherwise)."""

    async def checker(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if scope not in principal.scopes:
            raise ApiError(403, "forbidden", f"this API key lacks the {scope} scope")
        return principal

    return checker


ReadPrincipal = Annotated[Principal, Depends(require_scope("scans:read"))]
WritePrincipal = Annotated[Principal, Depends(require_scope("scans:write"))]
