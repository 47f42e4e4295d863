"""Turn an almost integral LP solution into a feasible plan with a few cheapest moves.

Rounding each fractional job to its largest LP column breaks at most a few rows by at most a
job's worth (a basic LP solution has about M + G fractional jobs). The repair then moves jobs,
always the cheapest move that helps:
 1. a model over capacity sheds the jobs whose moves elsewhere (a model with room, or deferral
    if allowed) cost least, counting the quality they lose at the LP's quality price;
 2. a group short of its quality row takes the move with the least cost per unit of surplus gained
    (capped at the deficit, so a move that closes it is judged by its whole cost): one job of the
    group to a more accurate model with room, off to deferral if it drags the mean down, in from
    deferral if it lifts it; and when capacity is short, two jobs of the pool trading places
    (their models, or one's model and the other's deferral): every model is full then, every
    single move goes through deferral at a penalty's cost, and a trade costs far less. A trade
    never pushes another group's row below zero (or further below).
Moves only fill models that have room, so step 2 never breaks step 1. Returns None when no move
helps (every model full and no trade, say); the caller then falls back to a MILP.
 3. Polish, because steps 1-2 overshoot (a whole job's quality to close a fraction of one): the
    single moves that save most while every row still holds, into options with room (a slot that
    step 1 or 2 freed is filled by the best job in the whole window for it, e.g. the deferred job
    with the largest penalty); then the best-saving trade of two jobs' options within the pool
    (loads unchanged, so the full cheap models and deferral take part); repeated while either
    finds something.

Every step is bounded whatever the window: the trades look only at the pool (the jobs nearest a
tie, plus the ones the repair moved, at most MAX_POOL); step 1 prices every job on an overfull
model once per pass; the polish's single moves are chosen among candidates found in one pass over
the window per round; and each step has a move budget.
"""
from __future__ import annotations

import numpy as np

from scheduler.optimizer.problem import AssignmentProblem, settled_surplus

MAX_POOL = 600             # jobs the trades look at (pool x pool matrices)
MAX_QUALITY_MOVES = 400    # per group
MAX_CAPACITY_PASSES = 32
MAX_POLISH_ROUNDS = 5
MAX_IMPROVING_MOVES = 200  # single moves per polish round ...
IMPROVE_CANDIDATES = 128   # ... chosen among this many jobs per option (see _improve)
# Trades per polish round: pool^2 x trades stays within this many pair evaluations (about 110
# trades at a pool of 300), but at least MIN_TRADES.
TRADE_PAIR_BUDGET = 10_000_000
MIN_TRADES = 8
TOL = 1e-9


class _Plan:
    """The plan under repair: the option of every job (deferral is option M), the loads and the
    quality surplus per group, kept up to date move by move."""

    def __init__(self, problem: AssignmentProblem, coeff: np.ndarray, plan: np.ndarray) -> None:
        n, m = problem.num_jobs, problem.num_models
        finite_w = np.isfinite(problem.deferral_penalty_usd)
        self.m = m
        self.group = problem.group
        self.cost = np.concatenate(
            [problem.cost_usd, np.where(finite_w, problem.deferral_penalty_usd, 0.0)[:, None]], axis=1)
        self.gain = np.concatenate([coeff, np.zeros((n, 1))], axis=1)
        self.allowed = np.concatenate([problem.eligible, finite_w[:, None]], axis=1)
        # Loads are per capacity row (R of them, then one for deferral, never full); each option
        # (M columns, then deferral) draws on its row.
        num_cap = problem.num_capacity_rows
        self.num_cap = num_cap
        self.row = np.append(problem.rows, num_cap)
        self.capacity = np.concatenate([problem.capacity, [np.iinfo(np.int64).max]])
        self.has_row = ~np.isnan(problem.alpha)
        self.option = np.where(plan < 0, m, plan).astype(np.int64)
        self.load = np.bincount(self.row[self.option], minlength=num_cap + 1)
        rows = np.arange(n)
        self.surplus = np.bincount(self.group, weights=self.gain[rows, self.option],
                                   minlength=self.has_row.size) + settled_surplus(problem)

    def slack(self) -> np.ndarray:
        """(G,) quality surplus per group; inf for groups without a row."""
        return np.where(self.has_row, self.surplus, np.inf)

    def room(self) -> np.ndarray:
        """(M+1,) whether each option's capacity row has room."""
        return (self.load < self.capacity)[self.row]

    def over(self) -> np.ndarray:
        """(R,) which capacity rows hold more jobs than they may."""
        return self.load[:self.num_cap] > self.capacity[:self.num_cap]

    def move(self, i: int, k: int) -> None:
        here = self.option[i]
        self.load[self.row[here]] -= 1
        self.load[self.row[k]] += 1
        self.surplus[self.group[i]] += self.gain[i, k] - self.gain[i, here]
        self.option[i] = k

    def trade(self, a: int, b: int) -> None:
        ka, kb = self.option[a], self.option[b]
        self.move(a, kb)
        self.move(b, ka)

    def as_model_index(self) -> np.ndarray:
        return np.where(self.option == self.m, -1, self.option)


def repair(problem: AssignmentProblem, coeff: np.ndarray, plan: np.ndarray, lam: np.ndarray,
           near: np.ndarray, short: bool = False) -> np.ndarray | None:
    """A feasible plan near ``plan`` (model per job, -1 deferred), or None. ``near``: the jobs
    closest to a tie at the LP prices, among which trades are looked for. ``short``: capacity is
    short (prices.capacity_short), so a quality row may be met by trades as well (step 2)."""
    state = _Plan(problem, coeff, plan)
    start = state.option.copy()
    if not _shed_overload(state, lam):
        return None
    pool = _pool(near, np.flatnonzero(state.option != start))
    for g in np.flatnonzero(state.has_row & (state.surplus < -TOL)):
        if not _fill_quality(state, int(g), pool if short else pool[:0]):
            return None
    pool = _pool(near, np.flatnonzero(state.option != start))
    for _ in range(MAX_POLISH_ROUNDS):
        moved = _improve(state) + _trade(state, pool)
        if not moved:
            break
    return state.as_model_index()


def _pool(near: np.ndarray, moved: np.ndarray) -> np.ndarray:
    """The jobs nearest a tie and those the repair moved, at most MAX_POOL in all."""
    extra = np.setdiff1d(moved, near)
    return np.union1d(near, extra[:max(0, MAX_POOL - near.size)])


def _shed_overload(state: _Plan, lam: np.ndarray) -> bool:
    """Step 1 (module doc), in passes: every job on an overfull model is priced at its cheapest
    way off it, and the cheapest are moved until the model fits; a pass whose destinations fill
    up leaves the rest to the next."""
    for _ in range(MAX_CAPACITY_PASSES):
        over = np.append(state.over(), False)
        if not over.any():
            return True
        jobs = np.flatnonzero(over[state.row[state.option]])
        here = state.option[jobs]
        lost = state.gain[jobs, here][:, None] - state.gain[jobs]
        score = (state.cost[jobs] - state.cost[jobs, here][:, None]
                 + lam[state.group[jobs]][:, None] * lost)
        ok = state.allowed[jobs] & state.room()[None, :]
        ok[np.arange(jobs.size), here] = False
        score = np.where(ok, score, np.inf)
        dest = score.argmin(axis=1)
        best = score[np.arange(jobs.size), dest]
        excess = int((state.load - state.capacity)[:state.num_cap].clip(min=0).sum())
        moved = 0
        for t in np.argsort(best, kind="stable"):
            if moved == excess or not np.isfinite(best[t]):
                break
            i, k = int(jobs[t]), int(dest[t])
            from_row, to_row = state.row[here[t]], state.row[k]
            if state.load[from_row] <= state.capacity[from_row] or state.load[to_row] >= state.capacity[to_row]:
                continue
            state.move(i, k)
            moved += 1
        if not moved:
            return False
    return not state.over().any()


def _fill_quality(state: _Plan, g: int, pool: np.ndarray) -> bool:
    """Step 2 (module doc) for group g, trading within ``pool`` (empty: single moves only); in
    place. False if no move helps.

    The caller passes an empty pool unless capacity is short: with room on the models the single
    moves are cost-sized, greedy trades here did no better on the benchmark windows (better on
    some, worse on as many), and the polish trades anyway."""
    members = np.flatnonzero(state.group == g)
    in_pool = pool[state.group[pool] == g]
    for _ in range(MAX_QUALITY_MOVES):
        deficit = -state.surplus[g]
        if deficit <= TOL:
            return True
        single = _best_single_for_quality(state, members, deficit)
        trade = _best_trade_for_quality(state, g, in_pool, pool, deficit)
        if single is None and trade is None:
            return False
        if trade is None or (single is not None and single[0] <= trade[0]):
            assert single is not None
            state.move(single[1], single[2])
        else:
            state.trade(trade[1], trade[2])
    return -state.surplus[g] <= TOL


def _best_single_for_quality(state: _Plan, members: np.ndarray, deficit: float
                             ) -> tuple[float, int, int] | None:
    """(cost per unit of quality, job, option) of the best single move of a member into an
    option with room, or None."""
    here = state.option[members]
    gained = state.gain[members] - state.gain[members, here][:, None]
    ok = state.allowed[members] & state.room()[None, :] & (gained > 1e-12)
    if not ok.any():
        return None
    extra = state.cost[members] - state.cost[members, here][:, None]
    ratio = np.where(ok, extra / np.minimum(np.where(ok, gained, 1.0), deficit), np.inf)
    i, k = np.unravel_index(np.argmin(ratio), ratio.shape)
    return float(ratio[i, k]), int(members[i]), int(k)


def _best_trade_for_quality(state: _Plan, g: int, ours: np.ndarray, pool: np.ndarray,
                            deficit: float) -> tuple[float, int, int] | None:
    """(cost per unit of quality, a, b) of the best trade of options between a member ``a`` of
    group g and any pool job ``b`` that raises g's surplus and pushes no other row below zero
    (or further below), or None."""
    if not ours.size or pool.size < 2:
        return None
    ka, kb = state.option[ours], state.option[pool]
    cost_a, cost_b = state.cost[ours], state.cost[pool]
    gain_a, gain_b = state.gain[ours], state.gain[pool]
    # [a, b]: the change when a takes b's option and b takes a's.
    extra = (cost_a[:, kb] - cost_a[np.arange(ours.size), ka][:, None]
             + cost_b[:, ka].T - cost_b[np.arange(pool.size), kb][None, :])
    dq_a = gain_a[:, kb] - gain_a[np.arange(ours.size), ka][:, None]
    dq_b = (gain_b[:, ka] - gain_b[np.arange(pool.size), kb][:, None]).T
    same = (state.group[pool] == g)[None, :]
    gained = dq_a + np.where(same, dq_b, 0.0)
    other = state.slack()[state.group[pool]][None, :]
    other_ok = same | (dq_b >= -1e-12) | (other + dq_b >= TOL)
    ok = (state.allowed[ours][:, kb] & state.allowed[pool][:, ka].T & (ka[:, None] != kb[None, :])
          & other_ok & (gained > 1e-12))
    if not ok.any():
        return None
    ratio = np.where(ok, extra / np.minimum(np.where(ok, gained, 1.0), deficit), np.inf)
    a, b = np.unravel_index(np.argmin(ratio), ratio.shape)
    return float(ratio[a, b]), int(ours[a]), int(pool[b])


def _improve(state: _Plan) -> int:
    """Fill room the other steps left (a job moved out frees a slot on a cheap model, or a
    deferred job's slot) with the single move that saves most while every quality row still
    holds, repeatedly; in place. The number of moves made.

    Each move is the best over the whole window, but found among candidates picked in one pass:
    for every option, the IMPROVE_CANDIDATES jobs that would save most by moving to it now (rooms
    and slack permitting). A move changes only its own job's savings and the rooms and slack, so
    a job outside that list can win only after more moves into one option than it holds; the
    next polish round picks afresh."""
    n = state.option.size
    rows = np.arange(n)
    saving = state.cost[rows, state.option][:, None] - state.cost
    dq = state.gain - state.gain[rows, state.option][:, None]
    slack = state.slack()[state.group]
    worth = np.where(state.allowed & (dq >= -slack[:, None] + TOL) & (saving > 1e-12), saving,
                     -np.inf)
    movable = np.flatnonzero(np.isfinite(worth).any(axis=1))
    if not movable.size:
        return 0
    worth = worth[movable]
    keep = min(IMPROVE_CANDIDATES, movable.size)
    best = np.argpartition(-worth, keep - 1, axis=0)[:keep]
    jobs = movable[np.unique(best[np.isfinite(worth[best, np.arange(worth.shape[1])])])]
    for moves in range(MAX_IMPROVING_MOVES):
        if not jobs.size:
            return moves
        here = state.option[jobs]
        saves = state.cost[jobs, here][:, None] - state.cost[jobs]
        lift = state.gain[jobs] - state.gain[jobs, here][:, None]
        spare = state.slack()[state.group[jobs]]
        ok = (state.allowed[jobs] & state.room()[None, :] & (lift >= -spare[:, None] + TOL)
              & (saves > 1e-12))
        if not ok.any():
            return moves
        i, k = np.unravel_index(np.argmax(np.where(ok, saves, -np.inf)), saves.shape)
        state.move(int(jobs[i]), int(k))
    return MAX_IMPROVING_MOVES


def _trade(state: _Plan, pool: np.ndarray) -> int:
    """Exchange the options of two pool jobs (loads unchanged) while that saves and every quality
    row holds, best saving first; in place. Single moves cannot use a full cheap model; trades
    can. Each round prices every pair of the pool (only the pairs that would save are checked
    further), so the number of rounds shrinks with its square (TRADE_PAIR_BUDGET)."""
    if pool.size < 2:
        return 0
    g = state.group[pool]
    cost, gain = state.cost[pool], state.gain[pool]
    allowed = state.allowed[pool]
    rows = np.arange(pool.size)
    limit = max(MIN_TRADES, TRADE_PAIR_BUDGET // (pool.size * pool.size))
    for moves in range(limit):
        ka = state.option[pool]
        saving = cost[rows, ka][:, None] - cost[:, ka]   # [a, b]: a's saving on b's option
        saving += saving.T
        a, b = np.nonzero(np.triu(saving > 1e-12, 1))
        ok = allowed[a, ka[b]] & allowed[b, ka[a]]
        a, b = a[ok], b[ok]
        dq_a = gain[a, ka[b]] - gain[a, ka[a]]
        dq_b = gain[b, ka[a]] - gain[b, ka[b]]
        slack = state.slack()[g]
        ok = np.where(g[a] == g[b], slack[a] + dq_a + dq_b >= TOL,
                      (slack[a] + dq_a >= TOL) & (slack[b] + dq_b >= TOL))
        if not ok.any():
            return moves
        best = np.argmax(np.where(ok, saving[a, b], -np.inf))
        state.trade(int(pool[a[best]]), int(pool[b[best]]))
    return limit
