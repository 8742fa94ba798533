"""The HTTP endpoints (all under /v1, all behind a token). Thin: checks, store calls, allocator calls."""

from __future__ import annotations

import io
import json
import time
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, File, Header, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse

from bitalloc import __version__ as bitalloc_version
from bitalloc.allocator.plan import Plan
from bitalloc.allocator.solve import check_solver
from bitalloc.errors import InvalidInput
from bitalloc.export.documents import DOCUMENT_FORMATS, plan_document
from bitalloc.quantizers.candidate import Candidate
from bitalloc.sensitivity.profile import COLUMNS, SensitivityProfile
from bitalloc.service import jobs, store
from bitalloc.service.auth import Caller, authenticate
from bitalloc.service.models import FrontierRecord, PlanRecord
from bitalloc.service.planning import (
    StoredProfile,
    compare_plans,
    make_frontier,
    make_plan,
    profile_from_upload,
)
from bitalloc.service.schemas import (
    CompareOut,
    ErrorOut,
    FrontierOut,
    FrontierRequest,
    JobOut,
    ModelCreate,
    ModelOut,
    PlanOut,
    PlanRequest,
    PlanSummary,
    ProfileJobCreate,
    ProfileOut,
    ProfileUpload,
    SessionCreate,
    SessionOut,
)


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    """The owner behind the request's bearer token (401 otherwise)."""
    return authenticate(request.app.state.db, authorization)


Me = Annotated[Caller, Depends(caller)]
ERRORS = {s: {"model": ErrorOut} for s in (400, 401, 404, 409, 413, 422)}
router = APIRouter(prefix="/v1", dependencies=[Depends(caller)], responses=ERRORS)


def _profile(request: Request, digest: str, owner: str) -> StoredProfile:
    db = request.app.state.db
    row = store.get_profile(db, digest, owner)
    return request.app.state.profiles.get(digest, lambda: store.profile_from_row(row))


def _profile_out(row) -> ProfileOut:
    return ProfileOut(
        hash=row.hash,
        model_name=row.model_name,
        model_hash=row.model_hash,
        n_units=row.n_units,
        n_candidates=row.n_candidates,
        meta=row.meta,
        created_at=row.created_at,
    )


def _stored(request: Request, response: Response, profile: SensitivityProfile, digest: str, me: Caller):
    row, created = store.put_profile(request.app.state.db, profile, digest, me.owner)
    response.status_code = 201 if created else 200
    return _profile_out(row)


@router.post("/profiles", response_model=ProfileOut, status_code=201, tags=["profiles"])
def upload_profile(body: ProfileUpload, request: Request, response: Response, me: Me) -> ProfileOut:
    """Upload a profile as JSON. Stored once per content hash: 201 when new, 200 when already stored."""
    return _stored(request, response, profile_from_upload(body), body.profile_hash, me)


@router.post("/profiles/files", response_model=ProfileOut, status_code=201, tags=["profiles"])
def upload_profile_files(
    table: Annotated[UploadFile, File(description="the .parquet that `bitalloc profile` wrote")],
    meta: Annotated[UploadFile, File(description="the .json beside it")],
    request: Request,
    response: Response,
    me: Me,
) -> ProfileOut:
    """Upload the two files of a saved profile (multipart: ``table`` and ``meta``)."""
    try:
        frame = pd.read_parquet(io.BytesIO(table.file.read()))
        doc = json.loads(meta.file.read())
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"send the profile's .parquet as `table` and its .json as `meta`: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("profile_hash"), str):
        raise InvalidInput(
            "the `meta` file has no profile_hash; send the .json that `bitalloc profile` wrote"
        )
    upload = ProfileUpload(
        profile_hash=doc["profile_hash"],
        meta=doc,
        table={c: frame[c].tolist() for c in COLUMNS if c in frame.columns},
    )
    return _stored(request, response, profile_from_upload(upload), upload.profile_hash, me)


@router.get("/profiles", response_model=list[ProfileOut], tags=["profiles"])
def list_profiles(request: Request, me: Me) -> list[ProfileOut]:
    """Profiles you uploaded or computed."""
    return [_profile_out(r) for r in store.list_profiles(request.app.state.db, me.owner)]


@router.get("/profiles/{digest}", response_model=ProfileOut, tags=["profiles"])
def get_profile(digest: str, request: Request, me: Me) -> ProfileOut:
    """One profile's metadata."""
    return _profile_out(store.get_profile(request.app.state.db, digest, me.owner))


@router.post("/models", response_model=ModelOut, status_code=201, tags=["models"])
def register_model(body: ModelCreate, request: Request, me: Me) -> ModelOut:
    """Register a model to profile."""
    row = store.add_model(request.app.state.db, me.owner, body.name, body.source)
    return ModelOut(id=row.id, name=row.name, source=row.source, created_at=row.created_at)


@router.get("/models", response_model=list[ModelOut], tags=["models"])
def list_models(request: Request, me: Me) -> list[ModelOut]:
    """Your registered models."""
    rows = store.list_models(request.app.state.db, me.owner)
    return [ModelOut(id=r.id, name=r.name, source=r.source, created_at=r.created_at) for r in rows]


@router.get("/models/{model_id}", response_model=ModelOut, tags=["models"])
def get_model(model_id: str, request: Request, me: Me) -> ModelOut:
    """One registered model."""
    r = store.get_model(request.app.state.db, model_id, me.owner)
    return ModelOut(id=r.id, name=r.name, source=r.source, created_at=r.created_at)


def _job_out(row) -> JobOut:
    return JobOut(
        id=row.id,
        kind=row.kind,
        model_id=row.model_id,
        params=row.params,
        status=row.status,
        attempt=row.attempt,
        max_attempts=row.max_attempts,
        progress=row.progress,
        history=row.history,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
    )


@router.post("/jobs", response_model=JobOut, status_code=202, tags=["jobs"])
def submit_profile_job(body: ProfileJobCreate, request: Request, me: Me) -> JobOut:
    """Queue a profiling job for a registered model; a `bitalloc worker` runs it."""
    state = request.app.state
    store.get_model(state.db, body.model_id, me.owner)
    for name in body.settings.candidates or ():
        Candidate.parse(name)
    params = body.settings.model_dump(mode="json")
    row = jobs.enqueue(
        state.db,
        me.owner,
        "profile",
        params,
        max_attempts=state.settings.max_attempts,
        model_id=body.model_id,
    )
    return _job_out(row)


@router.get("/jobs", response_model=list[JobOut], tags=["jobs"])
def list_jobs(request: Request, me: Me) -> list[JobOut]:
    """Your jobs with their status and progress."""
    return [_job_out(r) for r in jobs.list_jobs(request.app.state.db, me.owner)]


@router.get("/jobs/{job_id}", response_model=JobOut, tags=["jobs"])
def get_job(job_id: str, request: Request, me: Me) -> JobOut:
    """One job: status, attempt, progress (step, done, total) and, when done, the profile hash."""
    return _job_out(jobs.get_job(request.app.state.db, job_id, me.owner))


def _session_out(r) -> SessionOut:
    return SessionOut(id=r.id, name=r.name, profile_hash=r.profile_hash, created_at=r.created_at)


@router.post("/sessions", response_model=SessionOut, status_code=201, tags=["sessions"])
def open_session(body: SessionCreate, request: Request, me: Me) -> SessionOut:
    """Open a planning session on a profile you may use."""
    return _session_out(store.add_session(request.app.state.db, me.owner, body.profile_hash, body.name))


@router.get("/sessions", response_model=list[SessionOut], tags=["sessions"])
def list_sessions(request: Request, me: Me) -> list[SessionOut]:
    """Your sessions."""
    return [_session_out(r) for r in store.list_sessions(request.app.state.db, me.owner)]


@router.get("/sessions/{session_id}", response_model=SessionOut, tags=["sessions"])
def get_session(session_id: str, request: Request, me: Me) -> SessionOut:
    """One of your sessions."""
    return _session_out(store.get_session(request.app.state.db, session_id, me.owner))


def _summary(r: PlanRecord) -> dict:
    return {
        "id": r.id,
        "session_id": r.session_id,
        "profile_hash": r.profile_hash,
        "request": r.request,
        "bytes": r.nbytes,
        "bpw": r.bpw,
        "predicted_error": r.predicted_error,
        "created_at": r.created_at,
    }


def _plan_out(r: PlanRecord) -> PlanOut:
    return PlanOut(**_summary(r), bitalloc_version=r.bitalloc_version, plan=r.document)


@router.post("/sessions/{session_id}/plans", response_model=PlanOut, status_code=201, tags=["plans"])
def create_plan(session_id: str, body: PlanRequest, request: Request, me: Me) -> PlanOut:
    """Solve for a plan under the budget and constraints; stored, immutable, with its request."""
    db = request.app.state.db
    session = store.get_session(db, session_id, me.owner)
    check_solver(body.solver)
    profile = _profile(request, session.profile_hash, me.owner)
    plan = make_plan(
        profile, body.budget.to_budget(), body.constraints, solver=body.solver, time_limit=body.time_limit
    )
    record = PlanRecord(
        id=store.new_id(),
        session_id=session.id,
        owner=me.owner,
        profile_hash=session.profile_hash,
        request=body.model_dump(mode="json"),
        document=plan.to_json(),
        nbytes=plan.nbytes,
        bpw=plan.bpw,
        predicted_error=plan.predicted_error,
        bitalloc_version=bitalloc_version,
        created_at=time.time(),
    )
    return _plan_out(store.add_plan(db, record))


@router.get("/sessions/{session_id}/plans", response_model=list[PlanSummary], tags=["plans"])
def list_plans(session_id: str, request: Request, me: Me) -> list[PlanSummary]:
    """The plans of a session (summaries; fetch one for its document)."""
    return [PlanSummary(**_summary(r)) for r in store.list_plans(request.app.state.db, session_id, me.owner)]


@router.get("/plans/{plan_id}", response_model=PlanOut, tags=["plans"])
def get_plan(plan_id: str, request: Request, me: Me) -> PlanOut:
    """One plan with its request and its bitalloc.plan/v1 document."""
    return _plan_out(store.get_plan(request.app.state.db, plan_id, me.owner))


@router.post("/plans/{plan_id}/reproduce", response_model=PlanOut, tags=["plans"])
def reproduce_plan(plan_id: str, request: Request, me: Me) -> PlanOut:
    """Solve the stored request again on the stored profile; 200 with the fresh plan when its assignment
    equals the stored one, 409 otherwise. Nothing is stored."""
    record = store.get_plan(request.app.state.db, plan_id, me.owner)
    body = PlanRequest.model_validate(record.request)
    profile = _profile(request, record.profile_hash, me.owner)
    plan = make_plan(
        profile, body.budget.to_budget(), body.constraints, solver=body.solver, time_limit=body.time_limit
    )
    doc = plan.to_json()
    if doc["assignment"] != record.document["assignment"]:
        return JSONResponse(
            {"error": "NotReproduced", "detail": "the same request now gives another assignment"}, 409
        )
    return PlanOut(**_summary(record), bitalloc_version=bitalloc_version, plan=doc)


@router.get("/plans/{plan_id}/export", tags=["plans"])
def export_plan(
    plan_id: str,
    request: Request,
    me: Me,
    format: Annotated[str, Query(description=f"one of {', '.join(DOCUMENT_FORMATS)}")] = DOCUMENT_FORMATS[0],
) -> Response:
    """The plan in a deployment format that needs no weights: its own JSON, GPTQModel's quantize_config
    (``gptq-dynamic``) or llama-quantize's tensor-type file (``llama-tensor-types``)."""
    if format not in DOCUMENT_FORMATS:
        raise InvalidInput(f"unknown export format {format!r}; known formats: {', '.join(DOCUMENT_FORMATS)}")
    record = store.get_plan(request.app.state.db, plan_id, me.owner)
    if format == DOCUMENT_FORMATS[0]:
        headers = {"Content-Disposition": f'attachment; filename="plan-{record.id}.json"'}
        return JSONResponse(record.document, headers=headers)
    doc = plan_document(Plan.from_json(record.document), format)
    headers = {"Content-Disposition": f'attachment; filename="plan-{record.id}-{doc.filename}"'}
    return Response(doc.text, media_type=doc.media_type, headers=headers)


@router.get("/plans/{a}/compare/{b}", response_model=CompareOut, tags=["plans"])
def compare(a: str, b: str, request: Request, me: Me) -> CompareOut:
    """Plan B against plan A: totals and every unit whose candidate differs."""
    db = request.app.state.db
    pa, pb = store.get_plan(db, a, me.owner), store.get_plan(db, b, me.owner)
    return CompareOut(a=a, b=b, **compare_plans(pa.document, pb.document))


def _frontier_out(r: FrontierRecord) -> FrontierOut:
    return FrontierOut(
        id=r.id, session_id=r.session_id, request=r.request, rows=r.rows, created_at=r.created_at
    )


@router.post("/sessions/{session_id}/frontiers", response_model=FrontierOut, status_code=201, tags=["plans"])
def create_frontier(session_id: str, body: FrontierRequest, request: Request, me: Me) -> FrontierOut:
    """Error against size for many budgets; one row per budget in the given order."""
    db = request.app.state.db
    session = store.get_session(db, session_id, me.owner)
    check_solver(body.solver)
    profile = _profile(request, session.profile_hash, me.owner)
    rows = make_frontier(profile, [b.to_budget() for b in body.budgets], body.constraints, solver=body.solver)
    record = FrontierRecord(
        id=store.new_id(),
        session_id=session.id,
        owner=me.owner,
        request=body.model_dump(mode="json"),
        rows=rows,
        created_at=time.time(),
    )
    return _frontier_out(store.add_frontier(db, record))


@router.get("/sessions/{session_id}/frontiers", response_model=list[FrontierOut], tags=["plans"])
def list_frontiers(session_id: str, request: Request, me: Me) -> list[FrontierOut]:
    """The frontiers of a session."""
    return [_frontier_out(r) for r in store.list_frontiers(request.app.state.db, session_id, me.owner)]


@router.get("/frontiers/{frontier_id}", response_model=FrontierOut, tags=["plans"])
def get_frontier(frontier_id: str, request: Request, me: Me) -> FrontierOut:
    """One frontier."""
    return _frontier_out(store.get_frontier(request.app.state.db, frontier_id, me.owner))
