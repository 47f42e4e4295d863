"""Solve time and cost gap of the optimizer's methods on windows with binding rows.

    python benchmarks/bench_optimizer.py                 # N = 1k, 10k, 50k x M = 4, 8, 16, then scarce
    python benchmarks/bench_optimizer.py --quick         # N = 1k, 10k x M = 8, short limits
    python benchmarks/bench_optimizer.py --sizes 1000x8 10000x8 --cbc-time-limit 60
    python benchmarks/bench_optimizer.py --sizes 10000x8 --methods      # fast alone
    python benchmarks/bench_optimizer.py --scarce-only --baseline-ref HEAD   # scarce, old vs new
    python benchmarks/bench_optimizer.py --scarce-only --cascades --scarce-sizes 10000x4x128

Ample capacity (the first table). Instances come from scheduler.optimizer.synthetic: costs spanning
two orders of magnitude, success rising with cost, cheap models' capacity below the window, alpha
between the cheapest and the best reachable mean, 10% must-assign jobs. Times are wall clock
through ``solve`` (validation and the relaxation step included; fast: the median of --repeat-fast
runs). Methods: fast; exact HiGHS (the MILP as a sparse matrix into highspy: the reference);
PuLP+HiGHS; ECCOS-style PuLP+CBC with a time limit. Gaps: "gap vs best" compares a plan's cost with
the best plan any method found, "certified" with the best lower bound any method proved (an upper
bound on the true distance to the optimum).

Scarce capacity (the second table): a busy scheduler's window, far more jobs than free slots
(synthetic.scarce_problem: N jobs x 8 models, 100, 128 or 1,000 slots in all; five batches with
alpha 0.5-0.8 hold a quarter of the jobs; deferral penalties as the policy makes them, 1 USD x
(1 + age in minutes) with ages over 0-600 minutes, up to 11x for the 10% with a deadline; costs
1e-6..1e-2 USD). Each method runs in its own process, so "peak mem" is what the solve added to
the process's peak resident size (Linux's VmHWM, reset after a warm-up solve).
"gap to bound" is objective minus the fast path's Lagrangian bound in USD (the objective is the
penalties of thousands of deferred jobs, so its relative size says little; the bound is the LP
optimum, which can sit hundreds of USD below the integer optimum when a quality row is met by a
fraction of a job worth a thousand USD of penalty); "vs exact" is the same plan against exact
HiGHS (--scarce-exact-max-jobs and below). --baseline-ref REF adds rows for the optimizer as
committed at REF (its scheduler package from ``git archive``) on the same instances, in the same
run: the way to compare before and after on a noisy machine. --cascades adds to each scarce
window a cascade column per pair of its models (synthetic.with_cascade_columns: M (M - 1) / 2 more
columns), each sharing its first model's capacity row, as the policy plans them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# The optimizer under test: this checkout, or in a worker process for the baseline rows an older
# commit's scheduler package (see --baseline-ref), named by this variable.
CODE_ENV = "BENCH_OPTIMIZER_CODE"
sys.path.insert(0, os.environ.get(CODE_ENV, str(ROOT)))

if TYPE_CHECKING:
    from scheduler.optimizer import AssignmentProblem, AssignmentSolution

WORKER_TIMEOUT_S = 900
SCARCE_SIZES = ["2000x8x100", "2000x8x128", "2000x8x1000", "10000x8x100", "10000x8x128",
                "10000x8x1000", "50000x8x100", "50000x8x128", "50000x8x1000"]


@dataclass
class Row:
    method: str
    time_s: float | None
    solution: AssignmentSolution | None
    note: str = ""


def _run(problem, method: str, time_limit_s: float, repeat: int = 1) -> Row:
    from scheduler.optimizer import SolveStatus, solve
    from scheduler.optimizer.plan_check import violations

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


def bench(n: int, m: int, args: argparse.Namespace, baseline: Path | None) -> list[str]:
    from scheduler.optimizer.synthetic import synthetic_problem

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
    if baseline is not None:
        lines.append(_baseline_row(problem, n, m, best, bound, args, baseline))
    return lines


def _baseline_row(problem: AssignmentProblem, n: int, m: int, best: float, bound: float,
                  args: argparse.Namespace, baseline: Path) -> str:
    """The committed optimizer's fast row, timed like this checkout's: each in a fresh process,
    one after the other."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "window.npz"
        _save(problem, path)
        new = _in_worker(path, "fast", args.fast_time_limit, args.repeat_fast, None)
        old = _in_worker(path, "fast", args.fast_time_limit, args.repeat_fast, baseline)
    name = f"fast@{args.baseline_ref}"
    if "error" in old or "error" in new:
        return f"| {n} | {m} | {name} | - | - | - | - | {old.get('error') or new.get('error')} |"
    vs_best = (old["objective"] - best) / abs(best)
    certified = (old["objective"] - bound) / abs(old["objective"])
    return (f"| {n} | {m} | {name} | {_fmt_time(old['time_s'])} | {_fmt_gap(vs_best)} | "
            f"{_fmt_gap(certified)} | | baseline, cpu {_fmt_time(old['cpu_s'])}; "
            f"{old['time_s'] / new['time_s']:.2f}x this checkout's {_fmt_time(new['time_s'])} "
            f"in a like process |")


# --- Scarce capacity: every method in a worker process, for its time and its peak memory -----


def _save(problem: AssignmentProblem, path: Path) -> None:
    optional = {name: getattr(problem, name) for name in ("settled_jobs", "settled_p_sum", "capacity_row")
                if getattr(problem, name, None) is not None}
    np.savez(path, cost_usd=problem.cost_usd, p_success=problem.p_success,
             capacity=problem.capacity, eligible=problem.eligible, group=problem.group,
             alpha=problem.alpha, deferral_penalty_usd=problem.deferral_penalty_usd, **optional)


def _load(path: Path) -> AssignmentProblem:
    from scheduler.optimizer import AssignmentProblem

    with np.load(path) as data:
        return AssignmentProblem(**{k: data[k] for k in data.files})


def _worker(path: Path, method: str, time_limit_s: float, repeat: int) -> dict:
    """Solve the saved window ``repeat`` times with the optimizer on sys.path; what it cost."""
    from dataclasses import replace

    from scheduler.optimizer import solve
    from scheduler.optimizer.plan_check import violations

    problem = _load(path)
    # Warm-up on a slice of the window (imports, HiGHS's first call), so the peak resident size
    # read next is the baseline the timed solves add to.
    head = np.arange(min(300, problem.num_jobs))
    solve(replace(problem, cost_usd=problem.cost_usd[head], p_success=problem.p_success[head],
                  eligible=problem.eligible[head], group=problem.group[head],
                  deferral_penalty_usd=problem.deferral_penalty_usd[head]), method)
    before = _peak_baseline_kib()
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        sol = solve(problem, method, time_limit_s=time_limit_s)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    after = _memory_kib("VmHWM")
    plan = sol.model_index
    on = np.flatnonzero(plan >= 0)
    return {
        "time_s": statistics.median(times), "cpu_s": statistics.median(cpu),
        "peak_mb": (after - before) / 1024.0,
        "objective": sol.objective_usd, "bound": sol.lower_bound_usd, "solver": sol.solver,
        "status": sol.status.value, "scheduled": int(on.size),
        "spend": float(problem.cost_usd[on, plan[on]].sum()),
        "broken": len(violations(problem, plan, sol.group_alpha_used)) if not sol.relaxations else 0,
    }


def _memory_kib(field: str) -> int:
    """VmHWM (peak resident size) or VmRSS (resident size) of this process, KiB. Not ru_maxrss:
    Linux carries that across exec from the process that forked the worker, so a worker started
    by a benchmark that had just run a big exact solve would report that solve's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _peak_baseline_kib() -> int:
    """What the coming solves' peak is measured from: the resident size now, with the peak reset
    to it (Linux's clear_refs "5"), or, where that cannot be reset, the peak so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return _memory_kib("VmHWM")
    return _memory_kib("VmRSS")


def _in_worker(path: Path, method: str, time_limit_s: float, repeat: int,
               code: Path | None) -> dict:
    env = dict(os.environ)
    if code is not None:
        env[CODE_ENV] = str(code)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path), "--worker-method",
           method, "--worker-time-limit", str(time_limit_s), "--worker-repeat", str(repeat)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                             timeout=WORKER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"no result in {WORKER_TIMEOUT_S} s"}
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker failed: {tail[:120]}"}
    result: dict = json.loads(lines[-1])
    return result


def _baseline_tree(ref: str, directory: Path) -> Path:
    """The scheduler package as committed at ``ref``, unpacked under ``directory``."""
    archive = directory / "baseline.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref,
                    "scheduler"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(directory / "code", filter="data")
    return directory / "code"


def bench_scarce(spec: str, args: argparse.Namespace, baseline: Path | None) -> list[str]:
    from scheduler.optimizer.synthetic import scarce_problem, with_cascade_columns

    n, m, slots = (int(x) for x in spec.lower().split("x"))
    problem = scarce_problem(n, m, slots, seed=args.seed)
    if args.cascades:
        problem = with_cascade_columns(problem, seed=args.seed)
        m = problem.num_models
    runs: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "window.npz"
        _save(problem, path)
        runs.append(("fast", _in_worker(path, "fast", args.fast_time_limit, args.repeat_fast, None)))
        if baseline is not None and not args.cascades:   # an older optimizer may lack capacity_row
            runs.append((f"fast@{args.baseline_ref}", _in_worker(
                path, "fast", args.fast_time_limit, args.repeat_baseline, baseline)))
        if n <= args.scarce_exact_max_jobs:
            runs.append(("exact-highspy", _in_worker(path, "exact-highspy", args.highs_time_limit,
                                                     1, None)))
    fast = runs[0][1]
    exact = next((r for name, r in runs if name == "exact-highspy" and "error" not in r), None)
    lines = []
    for name, r in runs:
        if "error" in r:
            lines.append(f"| {n} | {m} | {slots} | {name} | - | - | - | - | - | {r['error']} |")
            continue
        bound = fast.get("bound", math.nan)
        gap = r["objective"] - bound
        vs_exact = f"{r['objective'] - exact['objective']:+.4f}" if exact is not None else "-"
        note = [r["status"], f"cpu {_fmt_time(r['cpu_s'])}", f"{r['scheduled']} scheduled",
                f"spend ${r['spend']:.4f}"]
        if r["broken"]:
            note.append(f"BROKE {r['broken']} ROW(S)")
        if name.startswith("fast@") and fast.get("time_s"):
            note.append(f"{r['time_s'] / fast['time_s']:.1f}x new's time")
        lines.append(
            f"| {n} | {m} | {slots} | {name} | {_fmt_time(r['time_s'])} | {r['peak_mb']:.1f} MB | "
            f"{r['objective']:.4f} | {gap:.4f} ({100 * gap / abs(r['objective']):.1e}%) | "
            f"{vs_exact} | {', '.join(note)} |")
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
    parser.add_argument("--scarce-sizes", nargs="+", default=SCARCE_SIZES,
                        help="NxMxSLOTS triples for the scarce table, e.g. 10000x8x128")
    parser.add_argument("--no-scarce", action="store_true", help="only the ample table")
    parser.add_argument("--cascades", action="store_true",
                        help="scarce windows with cascade columns sharing their first model's slots")
    parser.add_argument("--scarce-only", action="store_true", help="only the scarce table")
    parser.add_argument("--scarce-exact-max-jobs", type=int, default=2000,
                        help="compare scarce windows with exact HiGHS up to this many jobs")
    parser.add_argument("--baseline-ref", default=None,
                        help="also time the optimizer as committed at this git ref (e.g. HEAD)")
    parser.add_argument("--repeat-baseline", type=int, default=1,
                        help="scarce rows: median of this many baseline runs (it can be slow)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker-method", default="fast", help=argparse.SUPPRESS)
    parser.add_argument("--worker-time-limit", type=float, default=60.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-repeat", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(_worker(args.worker, args.worker_method, args.worker_time_limit,
                                 args.worker_repeat)))
        return
    scarce = [] if args.no_scarce else list(args.scarce_sizes)
    if args.quick:
        sizes = [(1000, 8), (10000, 8)]
        args.highs_time_limit = min(args.highs_time_limit, 60.0)
        args.cbc_time_limit = min(args.cbc_time_limit, 20.0)
        args.pulp_max_jobs = min(args.pulp_max_jobs, 1000)
        if not args.no_scarce and args.scarce_sizes == SCARCE_SIZES:
            scarce = ["2000x8x128", "10000x8x128", "10000x8x1000"]
    elif args.sizes:
        sizes = []
        for size in args.sizes:
            n, m = size.lower().split("x")
            sizes.append((int(n), int(m)))
    else:
        sizes = [(n, m) for n in (1000, 10_000, 50_000) for m in (4, 8, 16)]
    with tempfile.TemporaryDirectory() as tmp:
        baseline = _baseline_tree(args.baseline_ref, Path(tmp)) if args.baseline_ref else None
        if not args.scarce_only:
            print("| N | M | method | time | gap vs best | certified gap | time / fast | note |")
            print("|---|---|---|---|---|---|---|---|")
            for n, m in sizes:
                for line in bench(n, m, args, baseline):
                    print(line, flush=True)
        if scarce:
            print()
            print("| N | M | slots | method | time | peak mem | objective (USD) | gap to bound (USD) "
                  "| vs exact (USD) | note |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for spec in scarce:
                for line in bench_scarce(spec, args, baseline):
                    print(line, flush=True)


if __name__ == "__main__":
    main()
