"""How urgent a waiting job is: the one order both the window choice and the optimizer follow.

Leaving a job for a later tick costs far more than any single job's run, so the optimizer defers
jobs only when capacity or constraints force it. The cost of a deferral counts minutes of
waiting, so the oldest jobs win scarce capacity and nothing starves; a job whose deadline is near
counts as if it had waited DEADLINE_URGENCY_MINUTES more (a day, the default max_pending), so it
wins over anything that can still wait.

The tick chooses its window from the backlog in the same order (scheduler/storage/window.py):
jobs whose deadline is within URGENT_DEADLINE_LEAD_S first, nearest first, then the oldest. A job
the optimizer would prefer is therefore never left outside the window, and a deferred job,
growing older, always comes back into it.

Tenants share scarce capacity by weight: each tick, each tenant with waiting jobs gets a quota
of the free slots (max-min fair, fair_share_quotas), and the deferral penalty puts the jobs
inside their tenant's quota ahead of the rest, so one tenant's backlog, however old, cannot keep
another tenant's job waiting for more than a tick or two. The window gives each tenant a share of
its rows for the same reason (storage/window.py).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFERRAL_BASE_USD = 1.0
DEFERRAL_GROWTH_PER_MINUTE = 1.0
# A deadline starts to weigh when a job could wait less than this and still make it.
DEADLINE_URGENCY_WINDOW_S = 600.0
DEADLINE_URGENCY_MINUTES = 1440.0
# Deadline jobs enter the window before older jobs once their deadline is this close: the
# urgency window plus room for the run itself and the queue ahead of it.
URGENT_DEADLINE_LEAD_S = 3600.0


def deadline_urgency(slack_s: np.ndarray) -> np.ndarray:
    """0 while a job can wait DEADLINE_URGENCY_WINDOW_S and still make its deadline, rising to 1
    as that slack runs out (slack: seconds left after its fastest finish; inf without a deadline)."""
    return np.clip(1.0 - slack_s / DEADLINE_URGENCY_WINDOW_S, 0.0, 1.0)


def deferral_penalty_usd(ages_min: np.ndarray, slack_s: np.ndarray) -> np.ndarray:
    """What leaving each job for a later tick costs the optimizer, in USD."""
    waited_min = np.maximum(ages_min, 0.0) + DEADLINE_URGENCY_MINUTES * deadline_urgency(slack_s)
    return DEFERRAL_BASE_USD * (1.0 + DEFERRAL_GROWTH_PER_MINUTE * waited_min)


def fair_share_quotas(demand: dict[str, int], weights: dict[str, float], capacity: int) -> dict[str, int]:
    """How many of ``capacity`` slots each tenant gets this tick: max-min fair by weight (water
    filling). A tenant never gets more than it asks for (``demand``), and what one leaves unused is
    shared among the others by their weights, so no slot idles while anyone waits."""
    quotas = dict.fromkeys(demand, 0)
    left = capacity
    hungry = {t for t, d in demand.items() if d > 0}
    while left > 0 and hungry:
        total = sum(weights[t] for t in hungry)
        # Whole slots by weight (at least one each while slots remain), capped by what is asked.
        grants = {t: min(demand[t] - quotas[t], max(1, int(left * weights[t] / total))) for t in sorted(hungry)}
        for tenant, grant in grants.items():
            grant = min(grant, left)
            quotas[tenant] += grant
            left -= grant
        hungry = {t for t in hungry if quotas[t] < demand[t]}
    return quotas


def within_fair_share(tenants: Sequence[str], weights: dict[str, float], eligible: np.ndarray,
                      penalty_usd: np.ndarray, capacity: int) -> np.ndarray:
    """(N,) bool: the jobs inside their tenant's fair share of ``capacity`` (each tenant's most
    urgent eligible jobs, up to its quota). With one tenant, every eligible job is."""
    inside = eligible.copy()
    if len(set(tenants)) < 2:
        return inside
    by_tenant: dict[str, list[int]] = {}
    for i in np.flatnonzero(eligible):
        by_tenant.setdefault(tenants[int(i)], []).append(int(i))
    quotas = fair_share_quotas({t: len(jobs) for t, jobs in by_tenant.items()}, weights, capacity)
    for tenant, jobs in by_tenant.items():
        ranked = sorted(jobs, key=lambda i: -penalty_usd[i])
        inside[ranked[quotas[tenant]:]] = False
    return inside


def fair_share_penalty_usd(penalty_usd: np.ndarray, inside_share: np.ndarray) -> np.ndarray:
    """Deferral penalties that put every job inside its tenant's fair share ahead of every job
    outside it (by more than any penalty of the window), keeping the urgency order within each
    side. The optimizer then fills each tenant's share first, and spare capacity by urgency."""
    if inside_share.all() or not inside_share.any():
        return penalty_usd
    return penalty_usd + np.where(inside_share, float(penalty_usd.max()), 0.0)
