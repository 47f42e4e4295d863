"""Re-derive the small test samples in tests/data/ from the raw sets in shared/data/.

    python tests/data/derive_samples.py ../shared/data

Takes the first rows of each raw file (same columns, same formats) so the converters can be tested
on the real layouts, an interchange-format sample of RouteLLM MMLU for calibration tests, and
interchange-format samples *with the models' answers* (``response``) of RouteLLM GSM8K and the
RouterBench subset for the post-hoc estimator's tests.
See ATTRIBUTION.md for the sources and licences.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def head_csv(src: Path, dst: Path, rows: int, extra: list[int] = ()) -> None:
    csv.field_size_limit(sys.maxsize)
    with src.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        body = list(reader)
    keep = body[:rows] + [body[i] for i in extra if i >= rows]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with dst.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(keep)


def main(shared: Path) -> None:
    rb = shared / "routerbench_subset_routerdc" / "routerbench_zs"
    for name in ("arc_challenge", "mbpp", "winograde"):
        for split in ("train", "test"):
            head_csv(rb / f"{name}_{split}.csv", HERE / "routerbench_zs" / f"{name}_{split}.csv", 6)
    # the ARC pair that shares sample_id arc-challenge.val.137 across train and test (with NaN cells)
    for split in ("train", "test"):
        src = rb / f"arc_challenge_{split}.csv"
        with src.open(newline="", encoding="utf-8") as fh:
            ids = [r["sample_id"] for r in csv.DictReader(fh)]
        head_csv(src, HERE / "routerbench_zs" / f"arc_challenge_{split}.csv", 6,
                 [i for i, x in enumerate(ids) if x == "arc-challenge.val.137"])

    lr = shared / "llmrouter_9models"
    out = HERE / "llmrouter"
    for split, n in (("train", 12), ("test", 6)):
        rows = json.loads((lr / "dcrouter_preprocessed" / f"{split}.json").read_text())[:n]
        (out / "dcrouter_preprocessed").mkdir(parents=True, exist_ok=True)
        (out / "dcrouter_preprocessed" / f"{split}.json").write_text(json.dumps(rows, indent=1))
        wanted = {r["question"] for r in rows}
        qpath = lr / "example_data" / "query_data" / f"default_query_{split}.jsonl"
        lines = [ln for ln in qpath.read_text().split("\n") if ln.strip() and json.loads(ln)["query"] in wanted]
        (out / "example_data" / "query_data").mkdir(parents=True, exist_ok=True)
        (out / "example_data" / "query_data" / f"default_query_{split}.jsonl").write_text("\n".join(lines) + "\n")
    (out / "example_data" / "llm_candidates").mkdir(parents=True, exist_ok=True)
    (out / "example_data" / "llm_candidates" / "default_llm.json").write_text(
        (lr / "example_data" / "llm_candidates" / "default_llm.json").read_text())

    rl = shared / "routellm" / "evals"
    for subject in ("anatomy", "astronomy"):
        head_csv(rl / "mmlu" / "responses" / f"mmlu_{subject}.csv",
                 HERE / "routellm" / "evals" / "mmlu" / "responses" / f"mmlu_{subject}.csv", 10)
    head_csv(rl / "gsm8k" / "gsm8k_responses.csv", HERE / "routellm" / "evals" / "gsm8k" / "gsm8k_responses.csv", 12)

    # An interchange-format sample for calibration tests: RouteLLM MMLU, 1,000 records from
    # 24 subjects (every 14th record of the converted set), split as the converter splits them.
    sys.path.insert(0, str(HERE.parents[1]))
    from scheduler.datasets import write_dataset
    from scheduler.datasets.routellm import convert_routellm_mmlu

    records, prices = convert_routellm_mmlu(shared / "routellm")
    write_dataset(HERE / "mmlu_sample.jsonl", records[::14][:1000], prices)

    # Samples with answers: GSM8K, every 6th record (220: Mixtral and GPT-4, both responses), and
    # RouterBench, the first train/test records of each task (ARC and Winogrande answer with a
    # letter, MBPP with code), every model's response; split as the converters split them.
    from scheduler.datasets.routellm import convert_routellm_gsm8k
    from scheduler.datasets.routerbench import convert_routerbench

    records, prices = convert_routellm_gsm8k(shared / "routellm")
    write_dataset(HERE / "gsm8k_sample.jsonl", records[::6], prices)
    records, prices = convert_routerbench(shared / "routerbench_subset_routerdc")
    keep = []
    for task, n_train in (("arc-challenge", 16), ("winogrande", 16), ("mbpp", 8)):
        for split, n in (("train", n_train), ("test", n_train // 2)):
            keep += [r for r in records if r.task == task and r.split.value == split][:n]
    write_dataset(HERE / "routerbench_sample.jsonl", keep, prices)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
