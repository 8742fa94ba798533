"""Service settings: read once from the environment (or given explicitly), then frozen."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

from bitalloc.errors import InvalidInput

ENV_PREFIX = "BITALLOC_"


def default_database_url() -> str:
    """SQLite in the user's data folder: one file, nothing to install."""
    root = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return f"sqlite:///{Path(root) / 'bitalloc' / 'service.db'}"


@dataclass(frozen=True)
class ServiceSettings:
    """Everything the server and the workers can be tuned with.

    Each field can be set by the environment variable ``BITALLOC_<FIELD>`` (upper case).
    """

    database_url: str = ""
    max_request_bytes: int = 1 << 20  # JSON bodies of every endpoint but the profile upload
    max_upload_bytes: int = 64 << 20  # profile uploads
    lease_seconds: float = 30.0  # a job whose worker sent no heartbeat for this long is taken over
    max_attempts: int = 3  # a job whose workers died this many times is marked failed
    profile_cache: int = 8  # profiles kept solved-ready in memory per server process

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", default_database_url())
        for name in ("max_request_bytes", "max_upload_bytes", "max_attempts", "profile_cache"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lease_seconds <= 0:
            raise InvalidInput(f"lease_seconds must be positive, got {self.lease_seconds}")

    @classmethod
    def from_env(cls, **overrides: object) -> ServiceSettings:
        """Settings from ``BITALLOC_*`` variables; ``overrides`` that are not None win."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            kind = type(f.default)
            try:
                values[f.name] = kind(raw)
            except ValueError:
                raise InvalidInput(
                    f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not a {kind.__name__}; fix or unset it"
                ) from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
