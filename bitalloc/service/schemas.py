"""Request and response bodies of the HTTP API (pydantic lives here and nowhere else).

Budgets and constraints are tagged unions / optional fields so that new kinds can be added without
breaking old clients: add a field to BudgetSpec, or a new ``kind`` to Constraint.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bitalloc.allocator.problem import Budget
from bitalloc.errors import InvalidInput

Id = Annotated[str, Field(min_length=1, max_length=64)]
Hash = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="sha256 hex of the profile content")]


class Strict(BaseModel):
    """Unknown fields are an error, so that a typo never silently changes a plan."""

    model_config = ConfigDict(extra="forbid")


class BudgetSpec(Strict):
    """Limits on the quantized units, passed to the allocator's Budget as they are.

    Give at least one limit. The fields past the first two (latency, active bytes, per-unit rules) are
    accepted when the server's allocator supports them; otherwise the request is refused by name.
    """

    max_bytes: int | None = Field(None, gt=0, description="total bytes of the quantized units")
    target_bpw: float | None = Field(None, gt=0, description="average bits per weight")
    max_latency: float | None = Field(None, gt=0, description="summed latency table entries, microseconds")
    max_active_bytes: float | None = Field(None, gt=0, description="bytes weighted by routing frequency")
    min_bits: float | dict[str, float] | None = Field(None, description="for every unit, or {pattern: bits}")
    max_bits: float | dict[str, float] | None = Field(None, description="for every unit, or {pattern: bits}")
    pinned: dict[str, str] | None = Field(None, description="{unit or pattern: candidate name}")

    def to_budget(self) -> Budget:
        """The allocator's Budget (InvalidInput when the limits are wrong or not supported here)."""
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        known = {f.name for f in fields(Budget)}
        unsupported = sorted(set(given) - known)
        if unsupported:
            raise InvalidInput(f"this server's allocator does not support {unsupported}; use {sorted(known)}")
        return Budget(**given)


class BitsConstraint(Strict):
    """Units whose name matches ``units`` (a regular expression) take only bit widths in range."""

    kind: Literal["bits"]
    units: str = Field(min_length=1, max_length=500, examples=["self_attn"])
    min_bits: int | None = Field(None, ge=1, le=16)
    max_bits: int | None = Field(None, ge=1, le=16)


class CandidatesConstraint(Strict):
    """Units whose name matches ``units`` take only one of the listed candidates."""

    kind: Literal["candidates"]
    units: str = Field(min_length=1, max_length=500)
    allow: list[str] = Field(min_length=1, max_length=1000, examples=[["gptq-w8g64-sym"]])


Constraint = Annotated[BitsConstraint | CandidatesConstraint, Field(discriminator="kind")]


class PlanRequest(Strict):
    """One plan: a budget, optional constraints and the solver."""

    budget: BudgetSpec
    constraints: list[Constraint] = Field(default_factory=list, max_length=100)
    solver: str = Field("auto", description="auto, milp or lagrange")
    time_limit: float | None = Field(None, gt=0, le=600, description="seconds, MILP only")


class FrontierRequest(Strict):
    """Many budgets at once (solved together, loss non-increasing in the budget)."""

    budgets: list[BudgetSpec] = Field(min_length=1, max_length=1000)
    constraints: list[Constraint] = Field(default_factory=list, max_length=100)
    solver: str = "lagrange"


class ProfileUpload(Strict):
    """A profile as JSON: its metadata, its table by column, and the hash that must match both."""

    profile_hash: Hash
    meta: dict[str, Any]
    table: dict[str, list[Any]] = Field(
        description="columns unit, tie, rows, cols, candidate, error, nbytes; one entry per row"
    )


class SessionCreate(Strict):
    """Open a planning session on a stored profile."""

    profile_hash: Hash
    name: str = Field("", max_length=200)


class ModelCreate(Strict):
    """Register a model by where it loads from."""

    name: str = Field(min_length=1, max_length=200)
    source: str = Field(
        min_length=1,
        max_length=1000,
        description="bundled name, HF folder, .gguf file or hub id; a +fold-norms suffix folds the RMSNorm "
        "weights into the next linears",
    )


class ProfileSettings(Strict):
    """How a profiling job calibrates and which palette it scores."""

    corpus: str = Field("wiki", max_length=1000)
    windows: int = Field(32, ge=1, le=4096)
    seq_len: int = Field(512, ge=8, le=32768)
    seed: int = 0
    layers: int | None = Field(None, ge=1, description="profile only the first N decoder layers")
    candidates: list[str] | None = Field(None, min_length=1, max_length=1000, description="default palette")


class ProfileJobCreate(Strict):
    """Profile a registered model in a worker."""

    model_id: Id
    settings: ProfileSettings = Field(default_factory=ProfileSettings)


class ProfileOut(BaseModel):
    hash: str
    model_name: str
    model_hash: str
    n_units: int
    n_candidates: int
    meta: dict[str, Any]
    created_at: float


class SessionOut(BaseModel):
    id: str
    name: str
    profile_hash: str
    created_at: float


class PlanSummary(BaseModel):
    id: str
    session_id: str
    profile_hash: str
    request: dict[str, Any]
    bytes: int
    bpw: float
    predicted_error: float
    created_at: float


class PlanOut(PlanSummary):
    bitalloc_version: str
    plan: dict[str, Any] = Field(description="the bitalloc.plan/v1 document")


class FrontierOut(BaseModel):
    id: str
    session_id: str
    request: dict[str, Any]
    rows: list[dict[str, Any]]
    created_at: float


class UnitDiff(BaseModel):
    unit: str
    a: str | None
    b: str | None
    bytes_a: int
    bytes_b: int
    error_a: float
    error_b: float


class CompareOut(BaseModel):
    a: str
    b: str
    same_profile: bool
    bytes_a: int
    bytes_b: int
    bytes_diff: int
    bpw_a: float
    bpw_b: float
    predicted_error_a: float
    predicted_error_b: float
    predicted_error_diff: float
    units_differing: int
    differences: list[UnitDiff]


class ModelOut(BaseModel):
    id: str
    name: str
    source: str
    created_at: float


class JobOut(BaseModel):
    id: str
    kind: str
    model_id: str | None
    params: dict[str, Any]
    status: str
    attempt: int
    max_attempts: int
    progress: dict[str, Any]
    history: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: str | None
    created_at: float
    finished_at: float | None


class ErrorOut(BaseModel):
    error: str = Field(description="the error's class, e.g. InfeasibleBudget")
    detail: str = Field(description="what went wrong and what to change")
