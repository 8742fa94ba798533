"""The app factory, and the one place where domain errors become HTTP statuses.

``uvicorn --factory bitalloc.service.app:create_app`` (or ``bitalloc serve``) reads the settings
from ``BITALLOC_*`` environment variables; tests and embedders pass ServiceSettings.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bitalloc import __version__
from bitalloc.errors import BitallocError, InfeasibleBudget, InvalidInput, ProfileMismatch
from bitalloc.export.common import ExportError
from bitalloc.service.db import make_engine, migrate, sessions
from bitalloc.service.errors import MalformedRequest, NotFound, PayloadTooLarge, Unauthorized
from bitalloc.service.limits import BodyLimit
from bitalloc.service.planning import ProfileCache
from bitalloc.service.routes import router
from bitalloc.service.settings import ServiceSettings

STATUS = (  # most specific first
    (NotFound, 404),
    (Unauthorized, 401),
    (PayloadTooLarge, 413),
    (MalformedRequest, 400),
    (InfeasibleBudget, 422),
    (ProfileMismatch, 409),
    (ExportError, 422),
    (InvalidInput, 422),
)
UPLOAD_PATHS = ("/v1/profiles", "/v1/profiles/files")


def status_of(exc: BitallocError) -> int:
    """The HTTP status of a domain error."""
    return next((code for kind, code in STATUS if isinstance(exc, kind)), 400)


def _error(status: int, kind: str, detail: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


async def _domain_error(_request: Request, exc: BitallocError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
    return _error(status_of(exc), type(exc).__name__, str(exc), headers)


async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx", {})
        where = bad_json[0].get("loc", ["body", "?"])[-1]
        return _error(
            400,
            "MalformedJSON",
            f"the body is not valid JSON ({ctx.get('error', 'parse error')} at character {where}); "
            "send one JSON object with Content-Type: application/json",
        )
    parts = []
    for e in errors[:10]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return _error(422, "InvalidRequest", "fix these fields: " + "; ".join(parts))


async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = {404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge"}.get(
        exc.status_code, "HTTPError"
    )
    return _error(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """A new app on its own engine: migrates the database, then serves /v1 (and /openapi.json)."""
    settings = settings or ServiceSettings.from_env()
    engine = make_engine(settings.database_url)
    revision = migrate(engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        engine.dispose()

    app = FastAPI(
        title="bitalloc planning service",
        version=__version__,
        description="Profiles, planning sessions, plans and frontiers over HTTP. Send "
        "`Authorization: Bearer <token>` (create one with `bitalloc token create`).",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.db = sessions(engine)
    app.state.profiles = ProfileCache(settings.profile_cache)
    app.add_exception_handler(BitallocError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        upload=settings.max_upload_bytes,
        upload_paths=UPLOAD_PATHS,
    )
    app.include_router(router)

    @app.get("/healthz", tags=["service"])
    def health() -> dict:
        """Liveness and the schema revision (no token needed; carries no data)."""
        return {"status": "ok", "version": __version__, "schema_revision": revision}

    return app
