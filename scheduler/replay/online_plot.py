"""Plot of an online replay: cumulative regret and success / cost per window over the arrivals."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.replay.online import BEST_SINGLE, EXPLORING, GREEDY, ORACLE, STATIC
from scheduler.replay.online_report import OnlineReport

_STYLE: dict[str, dict[str, Any]] = {
    EXPLORING: {"color": "tab:red", "lw": 2.0, "zorder": 5},
    GREEDY: {"color": "tab:blue", "lw": 1.5, "zorder": 4},
    STATIC: {"color": "tab:green", "lw": 1.2, "ls": "--", "zorder": 3},
    BEST_SINGLE: {"color": "0.2", "lw": 1.0, "ls": ":", "zorder": 2},
    ORACLE: {"color": "0.55", "lw": 1.0, "ls": "--", "zorder": 1},
}


def plot_online(reports: OnlineReport | Sequence[OnlineReport], path: str | Path) -> None:
    """Four panels against arrivals: cumulative score regret, cumulative cost regret (share of the
    best single model's cost), success rate and cost per job (moving averages over windows).
    Several runs (seeds) are averaged, with a band of one standard deviation on the regrets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [reports] if isinstance(reports, OnlineReport) else list(reports)
    report = runs[0]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), dpi=110, sharex=True)
    (ax_s, ax_c), (ax_q, ax_k) = axes
    n_windows = len(report.policies[ORACLE].windows)
    span = max(1, round(n_windows / 20))
    for name in (ORACLE, BEST_SINGLE, STATIC, GREEDY, EXPLORING):
        if name not in report.policies:
            continue
        pols = [r.policies[name] for r in runs]
        x = np.array([w.end for w in pols[0].windows], dtype=float)
        sizes = np.diff(np.concatenate([[0.0], x]))
        label = name if name != BEST_SINGLE else f"best-single ({report.best_single['fixed_arm'].split('/')[-1]})"
        style = _STYLE[name]
        if name != BEST_SINGLE:   # the fixed arm's cost regret dwarfs the learners'
            for ax, series in ((ax_s, [[w.cum_score_regret for w in p.windows] for p in pols]),
                               (ax_c, [[100 * w.cum_cost_regret_share for w in p.windows] for p in pols])):
                arr = np.array(series)
                ax.plot(x, arr.mean(axis=0), label=label, **style)
                if len(runs) > 1:
                    sd = arr.std(axis=0, ddof=1)
                    ax.fill_between(x, arr.mean(axis=0) - sd, arr.mean(axis=0) + sd, color=style["color"],
                                    alpha=0.12, lw=0)
        succ = np.mean([[w.quality * k for w, k in zip(p.windows, sizes)] for p in pols], axis=0)
        cost = np.mean([[w.cost_usd for w in p.windows] for p in pols], axis=0)
        ax_q.plot(x, _moving(succ, sizes, span), label=label, **style)
        ax_k.plot(x, 1e6 * _moving(cost, sizes, span), label=label, **style)
    ax_q.axhline(report.alpha, color="purple", lw=0.8, ls=":", label=f"alpha {report.alpha:.3f}")
    ax_s.set_ylabel("cumulative score regret vs oracle\n(successes lost)")
    ax_c.set_ylabel("cumulative cost regret vs oracle\n(% of best single model's cost so far)")
    over = f"moving mean over {span} windows" if span > 1 else "per window"
    ax_q.set_ylabel(f"success rate ({over})")
    ax_k.set_ylabel(f"cost per job, micro-USD ({over})")
    ax_k.set_yscale("log")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("arrivals")
    ax_q.legend(loc="lower right", fontsize=7)
    start = ("cold start (no training data)" if report.mode == "cold"
             else f"warm start ({report.n_history_initial} train rows)")
    seeds = f"mean of {len(runs)} seeds, " if len(runs) > 1 else ""
    fig.suptitle(f"{report.dataset}, online with bandit feedback: {start}; {report.n_stream} arrivals ({report.stream}),"
                 f" {seeds}window {report.window}, refit every {report.refit_every}, {report.predictor}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _moving(total: np.ndarray, sizes: np.ndarray, span: int) -> np.ndarray:
    """Per-job mean over the last ``span`` windows (totals and job counts per window)."""
    num = np.convolve(total, np.ones(span))[:len(total)]
    den = np.convolve(sizes, np.ones(span))[:len(sizes)]
    return num / den
