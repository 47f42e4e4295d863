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
"""
from __future__ import annotations

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
