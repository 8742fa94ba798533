"""Errors of the service, each mapped to one HTTP status in app.py."""

from __future__ import annotations

from bitalloc.errors import BitallocError, InvalidInput


class NotFound(BitallocError):
    """An id that does not exist, or that belongs to another owner (never told apart)."""


class Unauthorized(BitallocError):
    """A request without a valid, unrevoked API token."""


class PayloadTooLarge(InvalidInput):
    """A request body above the configured limit."""


class MalformedRequest(InvalidInput):
    """A body that is not the JSON document the endpoint expects."""


class LeaseLost(BitallocError):
    """A worker's lease on a job expired and another worker took the job over."""
