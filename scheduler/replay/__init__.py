"""Replay: fit on a dataset's train split, route its test split, compare policies."""
from scheduler.replay.report import ALPHA_TOLERANCE, BestSingle, PolicyPoint, ReplayReport
from scheduler.replay.runner import ReplayConfig, ReplayError, run_replay, sweep_alphas

__all__ = [
    "ALPHA_TOLERANCE", "BestSingle", "PolicyPoint", "ReplayConfig", "ReplayError", "ReplayReport",
    "run_replay", "sweep_alphas",
]
