"""The tables (SQLAlchemy ORM). Change them only together with a new migration in migrations/versions."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every service table."""


class Token(Base):
    """An API token: only the sha256 of its secret is kept."""

    __tablename__ = "tokens"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Profile(Base):
    """A sensitivity profile, stored once by content hash; owners reach it through ProfileOwner."""

    __tablename__ = "profiles"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(500))
    model_hash: Mapped[str] = mapped_column(String(64))
    n_units: Mapped[int] = mapped_column(Integer)
    n_candidates: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict] = mapped_column(JSON)
    table_parquet: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Float)


class ProfileOwner(Base):
    """Which owners may open sessions on a profile (those who uploaded or computed it)."""

    __tablename__ = "profile_owners"
    profile_hash: Mapped[str] = mapped_column(ForeignKey("profiles.hash"), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), primary_key=True)


class Model(Base):
    """A registered model: a name and where to load it from (bundled name, folder, .gguf, hub id)."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(1000))
    created_at: Mapped[float] = mapped_column(Float)


class Session(Base):
    """A planning session on one profile, visible to its owner only."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    name: Mapped[str] = mapped_column(String(200))
    profile_hash: Mapped[str] = mapped_column(ForeignKey("profiles.hash"))
    created_at: Mapped[float] = mapped_column(Float)


class PlanRecord(Base):
    """An immutable plan: the request that made it, the profile it came from, the plan document."""

    __tablename__ = "plans"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    profile_hash: Mapped[str] = mapped_column(ForeignKey("profiles.hash"))
    request: Mapped[dict] = mapped_column(JSON)
    document: Mapped[dict] = mapped_column(JSON)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    bpw: Mapped[float] = mapped_column(Float)
    predicted_error: Mapped[float] = mapped_column(Float)
    bitalloc_version: Mapped[str] = mapped_column(String(50))
    created_at: Mapped[float] = mapped_column(Float)


class FrontierRecord(Base):
    """An immutable frontier: its request and one row per budget."""

    __tablename__ = "frontiers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"), index=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    request: Mapped[dict] = mapped_column(JSON)
    rows: Mapped[list] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Float)


class Job(Base):
    """A long job (profiling) run by a worker under a lease; ``attempt`` fences stale workers."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    model_id: Mapped[str | None] = mapped_column(ForeignKey("models.id"), nullable=True)
    params: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict] = mapped_column(JSON)
    history: Mapped[list] = mapped_column(JSON)
    result: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class JobCheckpoint(Base):
    """One finished piece of a job (a profiled unit's rows), so a retried job resumes after it."""

    __tablename__ = "job_checkpoints"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[dict] = mapped_column(JSON)
