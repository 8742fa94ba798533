"""Records of the service: profiles (once per content hash), models, sessions, plans and frontiers.

Every read takes the caller's owner: another owner's record reads as NotFound, never as forbidden,
so ids leak nothing. Plans and frontiers are written once and never updated.
"""

from __future__ import annotations

import io
import time
import uuid

import pandas as pd
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.orm import sessionmaker

from bitalloc.sensitivity.profile import COLUMNS, SensitivityProfile
from bitalloc.service.errors import NotFound
from bitalloc.service.models import FrontierRecord, Model, PlanRecord, Profile, ProfileOwner, Session


def new_id() -> str:
    """A random 32-hex-digit record id."""
    return uuid.uuid4().hex


def profile_bytes(profile: SensitivityProfile) -> bytes:
    """The profile's table as parquet bytes (columns and dtypes as SensitivityProfile.save writes)."""
    buffer = io.BytesIO()
    profile.table[list(COLUMNS)].astype(COLUMNS).reset_index(drop=True).to_parquet(buffer, index=False)
    return buffer.getvalue()


def profile_from_row(row: Profile) -> SensitivityProfile:
    """The SensitivityProfile stored in ``row``."""
    table = pd.read_parquet(io.BytesIO(row.table_parquet)).astype(COLUMNS)
    return SensitivityProfile(table=table, meta=dict(row.meta))


def add_profile(s: DbSession, profile: SensitivityProfile, digest: str, owner: str) -> tuple[Profile, bool]:
    """Store ``profile`` under ``digest`` unless it is there already; give ``owner`` access to it.

    Returns the row and whether it was new. Runs inside the caller's transaction.
    """
    row = s.get(Profile, digest)
    created = row is None
    if row is None:
        meta = {k: v for k, v in profile.meta.items() if k not in ("profile_hash", "schema")}
        row = Profile(
            hash=digest,
            model_name=str(meta.get("model_name", "")),
            model_hash=str(meta["model_hash"]),
            n_units=len(profile.units()),
            n_candidates=int(profile.table["candidate"].nunique()),
            meta=meta,
            table_parquet=profile_bytes(profile),
            created_at=time.time(),
        )
        s.add(row)
        s.flush()
    if s.get(ProfileOwner, (digest, owner)) is None:
        s.add(ProfileOwner(profile_hash=digest, owner=owner))
    return row, created


def put_profile(
    db: sessionmaker, profile: SensitivityProfile, digest: str, owner: str
) -> tuple[Profile, bool]:
    """``add_profile`` in its own transaction; a concurrent upload of the same profile is not an error."""
    try:
        with db.begin() as s:
            return add_profile(s, profile, digest, owner)
    except IntegrityError:
        with db.begin() as s:
            row, _ = add_profile(s, profile, digest, owner)
            return row, False


def get_profile(db: sessionmaker, digest: str, owner: str) -> Profile:
    """The profile row ``owner`` may use, or NotFound."""
    with db() as s:
        row = s.scalars(
            select(Profile)
            .join(ProfileOwner, ProfileOwner.profile_hash == Profile.hash)
            .where(Profile.hash == digest, ProfileOwner.owner == owner)
        ).first()
    if row is None:
        raise NotFound(f"no profile {digest!r} for you; upload it (POST /v1/profiles) or run a profile job")
    return row


def list_profiles(db: sessionmaker, owner: str) -> list[Profile]:
    """Profiles ``owner`` may use, newest first."""
    with db() as s:
        return list(
            s.scalars(
                select(Profile)
                .join(ProfileOwner, ProfileOwner.profile_hash == Profile.hash)
                .where(ProfileOwner.owner == owner)
                .order_by(Profile.created_at.desc())
            )
        )


def add_model(db: sessionmaker, owner: str, name: str, source: str) -> Model:
    """Register a model."""
    row = Model(id=new_id(), owner=owner, name=name, source=source, created_at=time.time())
    with db.begin() as s:
        s.add(row)
    return row


def get_model(db: sessionmaker, model_id: str, owner: str) -> Model:
    """``owner``'s model, or NotFound."""
    return _owned(db, Model, model_id, owner, "model", "GET /v1/models lists yours")


def list_models(db: sessionmaker, owner: str) -> list[Model]:
    """``owner``'s models, oldest first."""
    return _list(db, Model, owner)


def add_session(db: sessionmaker, owner: str, profile_hash: str, name: str) -> Session:
    """Open a session on a profile the owner may use."""
    get_profile(db, profile_hash, owner)
    row = Session(id=new_id(), owner=owner, name=name, profile_hash=profile_hash, created_at=time.time())
    with db.begin() as s:
        s.add(row)
    return row


def get_session(db: sessionmaker, session_id: str, owner: str) -> Session:
    """``owner``'s session, or NotFound."""
    return _owned(db, Session, session_id, owner, "session", "GET /v1/sessions lists yours")


def list_sessions(db: sessionmaker, owner: str) -> list[Session]:
    """``owner``'s sessions, oldest first."""
    return _list(db, Session, owner)


def add_plan(db: sessionmaker, row: PlanRecord) -> PlanRecord:
    """Store a new plan record (never updated afterwards)."""
    with db.begin() as s:
        s.add(row)
    return row


def get_plan(db: sessionmaker, plan_id: str, owner: str) -> PlanRecord:
    """``owner``'s plan, or NotFound."""
    return _owned(db, PlanRecord, plan_id, owner, "plan", "GET /v1/sessions/{id}/plans lists a session's")


def list_plans(db: sessionmaker, session_id: str, owner: str) -> list[PlanRecord]:
    """The plans of ``owner``'s session, oldest first (without their documents' use in mind)."""
    get_session(db, session_id, owner)
    with db() as s:
        return list(
            s.scalars(
                select(PlanRecord)
                .where(PlanRecord.session_id == session_id, PlanRecord.owner == owner)
                .order_by(PlanRecord.created_at)
            )
        )


def add_frontier(db: sessionmaker, row: FrontierRecord) -> FrontierRecord:
    """Store a new frontier record."""
    with db.begin() as s:
        s.add(row)
    return row


def get_frontier(db: sessionmaker, frontier_id: str, owner: str) -> FrontierRecord:
    """``owner``'s frontier, or NotFound."""
    return _owned(db, FrontierRecord, frontier_id, owner, "frontier", "POST a new one to get an id")


def list_frontiers(db: sessionmaker, session_id: str, owner: str) -> list[FrontierRecord]:
    """The frontiers of ``owner``'s session, oldest first."""
    get_session(db, session_id, owner)
    with db() as s:
        return list(
            s.scalars(
                select(FrontierRecord)
                .where(FrontierRecord.session_id == session_id, FrontierRecord.owner == owner)
                .order_by(FrontierRecord.created_at)
            )
        )


def _owned(db: sessionmaker, table: type, record_id: str, owner: str, what: str, hint: str):
    with db() as s:
        row = s.get(table, record_id)
    if row is None or row.owner != owner:
        raise NotFound(f"no {what} with id {record_id!r}; {hint}")
    return row


def _list(db: sessionmaker, table: type, owner: str) -> list:
    with db() as s:
        return list(s.scalars(select(table).where(table.owner == owner).order_by(table.created_at)))
