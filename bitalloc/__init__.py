"""bitalloc: mixed-precision bit allocation for large language models.

profile (sensitivity) -> plan (allocator) -> apply (quantizers) -> evaluate.
"""

from bitalloc.allocator.plan import Plan, UnitChoice
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.errors import (
    BitallocError,
    CorpusTooShort,
    InfeasibleBudget,
    InvalidInput,
    ProfileMismatch,
    UnsupportedShape,
)
from bitalloc.quantizers.candidate import Candidate, QuantKind, default_palette
from bitalloc.sensitivity.profile import SensitivityProfile

__all__ = [
    "AllocationProblem",
    "BitallocError",
    "Budget",
    "Candidate",
    "CorpusTooShort",
    "InfeasibleBudget",
    "InvalidInput",
    "Plan",
    "ProfileMismatch",
    "QuantKind",
    "SensitivityProfile",
    "Solution",
    "UnitChoice",
    "UnsupportedShape",
    "default_palette",
]
__version__ = "0.1.0"
