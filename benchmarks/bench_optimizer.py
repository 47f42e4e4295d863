"""Solve time and cost gap of the optimizer's methods on windows with binding rows.

    python benchmarks/bench_optimizer.py                 # N = 1k, 10k, 50k x M = 4, 8, 16
    python benchmarks/bench_optimizer.py --quick         # N = 1k, 10k x M = 8, short limits
    python benchmarks/bench_optimizer.py --sizes 1000x8 10000x8 --cbc-time-limit 60
    python benchmarks/bench_optimizer.py --sizes 10000x8 --methods      # fast alone

Instances come from scheduler.optimizer.synthetic: costs spanning two orders of magnitude, success
rising with cost, cheap models' capacity below the window, alpha between the cheapest and the best
reachable mean, 10% must-assign jobs. Times are wall clock through ``solve`` (validation and the
relaxation step included; fast: the median of --repeat-fast runs). Methods: fast; exact HiGHS (the MILP as a sparse matrix into
highspy: the reference); PuLP+HiGHS; ECCOS-style PuLP+CBC with a time limit. Gaps:
"gap vs best" compares a plan's cost with the best plan any method found, "certified" with the best
lower bound any method proved (an upper bound on the true distance to the optimum).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.optimizer import AssignmentSolution, SolveStatus, solve
from scheduler.optimizer.plan_check import violations
from scheduler.optimizer.synthetic import synthetic_problem


@dataclass
class Row:
    method: str
    time_s: float | None
    solution: AssignmentSolution | None
    note: str = ""


def _run(problem, method: str, time_limit_s: float, repeat: int = 1) -> Row:
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        sol = solve(problem, method, time_limit_s=time_limit_s)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    elapsed = statistics.median(times)
    if violations(problem, sol.model_index, sol.group_alpha_used) and not sol.relaxations:
        raise SystemExit(f"{method} returned an infeasible plan")
    note = ""
    # An exact method that stops short of proving optimality has hit its time limit (CBC counts
    # its limit from its own start, after PuLP has built and written the model).
    if "no incumbent" in sol.solver:
        note = "timeout, no incumbent: fast's plan"
    elif method != "fast" and sol.status is SolveStatus.FEASIBLE:
        note = "timeout"
    elif method == "fast":
        # On a shared machine wall time includes waiting for a core; CPU time does not.
        note = f"cpu {_fmt_time(statistics.median(cpu))}"
    return Row(method, elapsed, sol, note)


def _fmt_time(t: float | None) -> str:
    return "-" if t is None else (f"{t * 1e3:.0f} ms" if t < 1 else f"{t:.1f} s")


def _fmt_gap(g: float | None) -> str:
    return "-" if g is None or math.isnan(g) else f"{100 * g:.3f}%"


def bench(n: int, m: int, args: argparse.Namespace) -> list[str]:
    problem = synthetic_problem(n, m, seed=args.seed)
    rows = [_run(problem, "fast", args.fast_time_limit, args.repeat_fast)]
    for method in args.methods:
        if method in ("exact-cbc", "exact-highs") and n > args.pulp_max_jobs:
            rows.append(Row(method, None, None, f"skipped (N > {args.pulp_max_jobs})"))
        elif method == "exact-cbc":
            rows.append(_run(problem, method, args.cbc_time_limit))
        elif method != "fast":
            rows.append(_run(problem, method, args.highs_time_limit))

    solved = [r.solution for r in rows if r.solution is not None]
    best = min(s.objective_usd for s in solved)
    bound = max(s.lower_bound_usd for s in solved)
    by = {r.method: r for r in rows}
    lines = []
    for r in rows:
        s = r.solution
        if s is None:
            lines.append(f"| {n} | {m} | {r.method} | - | - | - | - | {r.note} |")
            continue
        vs_best = (s.objective_usd - best) / abs(best)
        certified = (s.objective_usd - bound) / abs(s.objective_usd)
        speedup = ""
        fast_s = by["fast"].time_s
        if r.method != "fast" and r.time_s is not None and fast_s:
            speedup = f"{r.time_s / fast_s:.0f}x"
        note = ", ".join(x for x in (r.note, s.status.value) if x)
        lines.append(
            f"| {n} | {m} | {r.method} | {_fmt_time(r.time_s)} | {_fmt_gap(vs_best)} | "
            f"{_fmt_gap(certified)} | {speedup} | {note} |"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=None,
                        help="NxM pairs, e.g. 1000x8 10000x16 (default: 1k,10k,50k x 4,8,16)")
    parser.add_argument("--quick", action="store_true", help="1k and 10k x 8, short limits")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fast-time-limit", type=float, default=60.0)
    parser.add_argument("--repeat-fast", type=int, default=5,
                        help="report the median of this many fast runs (it is quick)")
    parser.add_argument("--highs-time-limit", type=float, default=300.0,
                        help="time limit of the exact HiGHS reference (s)")
    parser.add_argument("--cbc-time-limit", type=float, default=60.0)
    parser.add_argument("--pulp-max-jobs", type=int, default=10_000,
                        help="skip PuLP+CBC and PuLP+HiGHS above this many jobs")
    parser.add_argument("--methods", nargs="*", default=["exact-highspy", "exact-highs", "exact-cbc"],
                        help="methods to compare with fast (keys of scheduler.optimizer.SOLVERS)")
    args = parser.parse_args(argv)
    if args.quick:
        sizes = [(1000, 8), (10000, 8)]
        args.highs_time_limit = min(args.highs_time_limit, 60.0)
        args.cbc_time_limit = min(args.cbc_time_limit, 20.0)
        args.pulp_max_jobs = min(args.pulp_max_jobs, 1000)
    elif args.sizes:
        sizes = []
        for size in args.sizes:
            n, m = size.lower().split("x")
            sizes.append((int(n), int(m)))
    else:
        sizes = [(n, m) for n in (1000, 10_000, 50_000) for m in (4, 8, 16)]
    print("| N | M | method | time | gap vs best | certified gap | time / fast | note |")
    print("|---|---|---|---|---|---|---|---|")
    for n, m in sizes:
        for line in bench(n, m, args):
            print(line, flush=True)


if __name__ == "__main__":
    main()
