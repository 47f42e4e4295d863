"""Run the fleet's models on questions with references and write outcome data with their answers.

    python scripts/record_fleet_outcomes.py tests/data/fleet_questions.jsonl tests/data/fleet_outcomes.jsonl

Each line of the questions file is ``{"prompt": ..., "reference": ..., "grader": "contains"}``
(grader optional, default ``contains``; see scheduler/grading.py). Every model of the fleet file
(``SWITCHYARD_FLEET_FILE``, default the embedded one; ``--models`` picks some) answers every
question through its production backend, one process, greedy decoding, one thread; each answer
is graded against the reference. The output is the interchange format
(scheduler/datasets/records.py) with each model's ``response``; every ``--test-every``-th question
is in the ``test`` split, the rest in ``train`` (``predictor fit`` without ``--split`` uses both), so
that ``switchyard predictor fit --dataset OUT --cascade`` fits the ex-ante predictor, the answer
judge and the cascade model on what these models really did. Prices are left unknown: the fleet
prices a job by the seconds it takes (its ``usd_per_second``), and the cascade fit reads them there.

This is how tests/data/fleet_outcomes.jsonl was made (SmolLM2-135M and Gemma-3-270M, the default
fleet, on llama.cpp); the end-to-end cascade test plans its cascades from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scheduler.datasets.io import write_dataset
from scheduler.datasets.records import Outcome, OutcomeRecord, Split
from scheduler.fleet import load_fleet
from scheduler.grading import Grader, grade
from scheduler.settings import Settings
from workers.backends import make_backend
from workers.backends.base import GenerationRequest


def read_questions(path: Path) -> list[tuple[str, str, Grader]]:
    questions = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        raw = json.loads(line)
        try:
            questions.append((str(raw["prompt"]), str(raw["reference"]), Grader(raw.get("grader", "contains"))))
        except (KeyError, ValueError) as exc:
            raise SystemExit(f"{path}:{number}: needs a prompt, a reference and a known grader ({exc})") from exc
    return questions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("questions", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", nargs="*", help="fleet models to run (default: all)")
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--task", default="qa", help="the records' task label")
    parser.add_argument("--test-every", type=int, default=4, help="every k-th question goes to the test split")
    args = parser.parse_args()

    questions = read_questions(args.questions)
    settings = Settings()
    fleet = load_fleet(settings.fleet_file)
    names = args.models or list(fleet.names)
    outcomes: list[dict[str, Outcome]] = [{} for _ in questions]
    for name in names:
        spec = fleet.get(name)
        backend = make_backend(spec, settings)
        start = time.perf_counter()
        try:
            for i, (prompt, reference, grader) in enumerate(questions):
                result = backend.generate(GenerationRequest(job_id=f"q{i}", prompt=prompt, messages=None,
                                                            max_tokens=args.max_tokens))
                cost = float(spec.cost_usd(result.input_tokens, result.output_tokens, result.latency_s))
                outcomes[i][name] = Outcome(grade(result.text, reference, grader), cost, result.output_tokens,
                                            result.text)
        finally:
            backend.close()
        right = sum(outcome[name].score for outcome in outcomes) / len(questions)
        print(f"{name}: {len(questions)} answers in {time.perf_counter() - start:.0f} s, {right:.1%} right",
              file=sys.stderr)
    records = [OutcomeRecord(f"{args.task}-{i}", prompt, args.task,
                             Split.TEST if i % args.test_every == args.test_every - 1 else Split.TRAIN, outcomes[i])
               for i, (prompt, _, _) in enumerate(questions)]
    write_dataset(args.out, records, {})
    print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
