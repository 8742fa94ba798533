"""The exception hierarchy: every error a user can cause is a BitallocError naming its fix."""

from __future__ import annotations


class BitallocError(Exception):
    """Base class of every error bitalloc raises on purpose."""


class InfeasibleBudget(BitallocError):
    """No assignment meets the budget; the message names the feasible range."""


class ProfileMismatch(BitallocError):
    """A plan, profile or statistics file belongs to another model, corpus or profile."""


class UnsupportedShape(BitallocError):
    """A quantizer cannot handle a tensor shape (for example a group size that does not divide it)."""


class InvalidInput(BitallocError):
    """Input that is malformed: NaN errors, unknown names, bad ranges, unreadable files."""


class CorpusTooShort(InvalidInput):
    """A corpus holds fewer tokens than the requested windows need."""
