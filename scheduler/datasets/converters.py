"""The converter registry: ``KIND`` -> function(src) -> (records, prices)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from scheduler.datasets.io import write_dataset
from scheduler.datasets.llmrouter import convert_llmrouter
from scheduler.datasets.records import DatasetFormatError, ModelPrice, OutcomeDataset, OutcomeRecord
from scheduler.datasets.routellm import convert_routellm_gsm8k, convert_routellm_mmlu
from scheduler.datasets.routerbench import convert_routerbench

Converter = Callable[[Path], tuple[list[OutcomeRecord], dict[str, ModelPrice]]]

CONVERTERS: dict[str, Converter] = {
    "routerbench": convert_routerbench,
    "llmrouter": convert_llmrouter,
    "routellm-mmlu": convert_routellm_mmlu,
    "routellm-gsm8k": convert_routellm_gsm8k,
}


def convert(kind: str, src: str | Path, out: str | Path) -> OutcomeDataset:
    """Convert the raw set at ``src`` with converter ``kind`` and write ``out`` (+ ``.models.json``)."""
    try:
        converter = CONVERTERS[kind]
    except KeyError:
        raise DatasetFormatError(f"unknown converter {kind!r}; choose one of {sorted(CONVERTERS)}") from None
    src = Path(src)
    if not src.exists():
        raise DatasetFormatError(f"{src}: no such file or folder")
    records, prices = converter(src)
    return write_dataset(out, records, prices)
