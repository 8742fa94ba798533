"""The first schema: tokens, profiles, models, sessions, plans, frontiers, jobs.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "profiles",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("model_name", sa.String(500), nullable=False),
        sa.Column("model_hash", sa.String(64), nullable=False),
        sa.Column("n_units", sa.Integer, nullable=False),
        sa.Column("n_candidates", sa.Integer, nullable=False),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.Column("table_parquet", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "profile_owners",
        sa.Column("profile_hash", sa.String(64), sa.ForeignKey("profiles.hash"), primary_key=True),
        sa.Column("owner", sa.String(200), primary_key=True),
    )
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("source", sa.String(1000), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("profile_hash", sa.String(64), sa.ForeignKey("profiles.hash"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "plans",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("sessions.id"), nullable=False, index=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("profile_hash", sa.String(64), sa.ForeignKey("profiles.hash"), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("document", sa.JSON, nullable=False),
        sa.Column("nbytes", sa.BigInteger, nullable=False),
        sa.Column("bpw", sa.Float, nullable=False),
        sa.Column("predicted_error", sa.Float, nullable=False),
        sa.Column("bitalloc_version", sa.String(50), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "frontiers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("session_id", sa.String(32), sa.ForeignKey("sessions.id"), nullable=False, index=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("rows", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False, index=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("model_id", sa.String(32), sa.ForeignKey("models.id"), nullable=True),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("lease_until", sa.Float, nullable=True),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=True),
    )
    op.create_table(
        "job_checkpoints",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id"), primary_key=True),
        sa.Column("index", sa.Integer, primary_key=True),
        sa.Column("data", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    for name in (
        "job_checkpoints",
        "jobs",
        "frontiers",
        "plans",
        "sessions",
        "models",
        "profile_owners",
        "profiles",
        "tokens",
    ):
        op.drop_table(name)
