"""Outcome datasets: the interchange format, its reader/writer and converters from public logs."""
from scheduler.datasets.converters import CONVERTERS, convert
from scheduler.datasets.costing import OutcomeMatrix, estimate_tokens, realised_cost_usd
from scheduler.datasets.io import models_path_for, read_dataset, write_dataset
from scheduler.datasets.records import (
    DatasetFormatError,
    ModelPrice,
    Outcome,
    OutcomeDataset,
    OutcomeRecord,
    Split,
)

__all__ = [
    "CONVERTERS", "DatasetFormatError", "ModelPrice", "Outcome", "OutcomeDataset", "OutcomeMatrix",
    "OutcomeRecord", "Split", "convert", "estimate_tokens", "models_path_for", "read_dataset",
    "realised_cost_usd", "write_dataset",
]
