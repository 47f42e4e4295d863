"""Cost-quality frontier plot of a replay report (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from scheduler.replay.report import ReplayReport

_STYLE: dict[str, dict[str, Any]] = {
    "switchyard": {"color": "tab:red", "marker": "o", "lw": 2.2, "zorder": 5},
    "eccos-ilp": {"color": "tab:blue", "marker": "s", "lw": 1.4, "zorder": 4},
    "eccos-r-rule": {"color": "tab:green", "marker": "^", "lw": 1.4, "zorder": 3},
    "oracle": {"color": "0.35", "marker": ".", "lw": 1.0, "zorder": 2, "ls": "--"},
    "task-oracle": {"color": "tab:orange", "marker": ".", "lw": 1.0, "zorder": 2, "ls": ":"},
}


def plot_frontier(report: ReplayReport, path: str | Path) -> None:
    """Quality (y) against cost share of the best single model (x) for every policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    singles = [name for name, pts in report.policies.items()
               if name not in _STYLE and name != "random"]
    for name in ("oracle", "task-oracle", "eccos-r-rule", "eccos-ilp", "switchyard"):
        pts = sorted((p for p in report.policies.get(name, []) if p.alpha is not None),
                     key=lambda p: p.cost_share_of_best)
        if not pts:
            continue
        style: dict[str, Any] = dict(_STYLE[name])
        ax.plot([p.cost_share_of_best for p in pts], [p.quality for p in pts], label=name,
                markersize=3.5, color=style.pop("color"), marker=style.pop("marker"), **style)
    for name in singles:
        p = report.policies[name][0]
        ax.scatter([p.cost_share_of_best], [p.quality], color="0.2", s=14, zorder=6)
        ax.annotate(name.split("/")[-1], (p.cost_share_of_best, p.quality), fontsize=6,
                    xytext=(3, -3), textcoords="offset points")
    rnd = report.policies.get("random")
    if rnd:
        ax.scatter([rnd[0].cost_share_of_best], [rnd[0].quality], marker="x", color="purple",
                   label="random", zorder=6)
    best = report.best_single
    ax.axhline(best.quality, color="0.6", lw=0.8, ls=":")
    share = report.reach_best.get("switchyard")
    if share is not None:
        ax.axvline(share, color="tab:red", lw=0.8, ls=":")
    ax.set_xlim(0, min(1.3, max(1.05, max(p.cost_share_of_best for pts in report.policies.values() for p in pts))))
    ax.set_xlabel(f"cost, share of the best single model ({best.model}, ${best.cost_usd:.2f})")
    ax.set_ylabel("realised quality (mean score) on the test split")
    ax.set_title(f"{report.dataset}: {report.n_test} test jobs, {report.n_train} train")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
