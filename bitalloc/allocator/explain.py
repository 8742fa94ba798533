"""Why each unit got its bits: marginal loss per byte one step up and down, against the limits' prices.

For each tie group at the solution: the step up is the candidate with more bytes and less loss that
saves the most loss per extra byte; the step down the candidate with fewer bytes that adds the least
loss per byte freed. The dual price of each limit (loss per byte, per microsecond, ...) comes from the
Lagrangian dual at the budget. At an LP optimum a group's step-up rate is at most the byte price and
its step-down rate at least it: that is why the unit has the bits it has.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bitalloc.allocator.multi import solve_dual
from bitalloc.allocator.problem import AllocationProblem, Budget, Solution
from bitalloc.allocator.resources import resources
from bitalloc.allocator.rules import apply_rules, candidate_bits


def step(m: AllocationProblem, choice: np.ndarray, up: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: the step's candidate (-1 if none), its byte change (>0) and loss change (>0)."""
    rows = np.arange(len(choice))
    db = m.nbytes - m.nbytes[rows, choice][:, None]
    dl = m.loss - m.loss[rows, choice][:, None]
    if up:
        ok = m.feasible & (db > 0) & (dl < 0)
        rate = np.where(ok, -dl / np.maximum(db, 1), -np.inf)
        best = np.argmax(rate, axis=1)
    else:
        ok = m.feasible & (db < 0)
        rate = np.where(ok, np.maximum(dl, 0) / np.maximum(-db, 1), np.inf)
        best = np.argmin(rate, axis=1)
    has = ok[rows, best]
    return np.where(has, best, -1), np.abs(db[rows, best]) * has, np.abs(dl[rows, best]) * has


def explain(problem: AllocationProblem, solution: Solution, budget: Budget) -> pd.DataFrame:
    """One row per unit: its candidate, bits, bytes and loss; the step up and down (candidate, bytes,
    loss change, loss per byte) of its tie group; the price of every limit; and a one-line reason."""
    p = apply_rules(problem, budget)
    m = p.merged()
    res = resources(p, m, budget)
    lam, _ = solve_dual(m, res)
    prices = {f"price_{r.name}": float(x) for r, x in zip(res, lam, strict=True)}
    gid = p.group_index()
    first = np.zeros(len(m.units), dtype=np.int64)
    first[gid[::-1]] = np.arange(len(gid))[::-1]
    gchoice = solution.choice[first]
    up_c, up_b, up_l = step(m, gchoice, up=True)
    dn_c, dn_b, dn_l = step(m, gchoice, up=False)
    byte_price = prices.get("price_bytes", 0.0)
    rows = np.arange(len(p.units))
    bits = candidate_bits(p)[rows, solution.choice]
    names = np.array((*p.candidates, ""), dtype=object)
    up_rate = np.where(up_b > 0, up_l / np.maximum(up_b, 1), 0.0)
    dn_rate = np.where(dn_b > 0, dn_l / np.maximum(dn_b, 1), np.inf)
    reasons = []
    for g in range(len(m.units)):
        parts = []
        if up_c[g] >= 0:
            parts.append(f"one step up saves {up_rate[g]:.3g} loss/byte")
        else:
            parts.append("no step up lowers its loss")
        if dn_c[g] >= 0:
            parts.append(f"one step down costs {dn_rate[g]:.3g} loss/byte")
        else:
            parts.append("no cheaper candidate")
        parts.append(f"byte price {byte_price:.3g}")
        reasons.append("; ".join(parts))
    df = pd.DataFrame(
        {
            "unit": p.units,
            "group": [m.units[g] for g in gid],
            "candidate": [p.candidates[c] for c in solution.choice],
            "bits": bits,
            "nbytes": p.nbytes[rows, solution.choice],
            "loss": p.loss[rows, solution.choice],
            "up_candidate": names[up_c[gid]],
            "up_bytes": up_b[gid],
            "up_loss_saved": up_l[gid],
            "up_loss_per_byte": up_rate[gid],
            "down_candidate": names[dn_c[gid]],
            "down_bytes": dn_b[gid],
            "down_loss_added": dn_l[gid],
            "down_loss_per_byte": dn_rate[gid],
            "reason": [reasons[g] for g in gid],
        }
    )
    for name, value in prices.items():
        df[name] = value
    return df
