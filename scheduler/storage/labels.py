"""Labelled outcomes from the job history: what each model really did (the predictor's teacher)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select

from scheduler.storage.database import Database
from scheduler.storage.tables import Job, prompt_text
from scheduler.storage.types import JobStatus


@dataclass(frozen=True)
class LabelledOutcome:
    prompt_text: str
    model: str
    score: float
    output_tokens: int | None


class LabelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def history(self, limit: int = 100_000) -> list[LabelledOutcome]:
        """The newest ``limit`` succeeded jobs that carry a score (graded or fed back)."""
        query = (select(Job.prompt, Job.messages, Job.assigned_model, Job.score, Job.output_tokens)
                 .where(Job.status == JobStatus.SUCCEEDED, Job.score.is_not(None), Job.assigned_model.is_not(None))
                 .order_by(Job.scored_at.desc()).limit(limit))
        with self.db.session() as session:
            rows = session.execute(query).all()
        return [LabelledOutcome(prompt_text(prompt, messages), str(model), float(score), tokens)
                for prompt, messages, model, score, tokens in rows]

    def counts_by_model(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(
                select(Job.assigned_model, func.count()).where(Job.score.is_not(None))
                .group_by(Job.assigned_model)).all()
        return {model: count for model, count in rows if model is not None}

    def recent_promises(self, limit: int) -> tuple[list[float], list[float]]:
        """(promised p, realised score) of the newest ``limit`` labelled jobs the optimizer chose a
        model for (exploring jobs made no promise)."""
        query = (select(Job.predicted_quality, Job.score)
                 .where(Job.score.is_not(None), Job.predicted_quality.is_not(None),
                        Job.exploring.is_not(True))
                 .order_by(Job.scored_at.desc()).limit(limit))
        with self.db.session() as session:
            rows = session.execute(query).all()
        pairs = [(float(promised), float(score)) for promised, score in rows
                 if promised is not None and score is not None]   # the query excludes None; the types do not know
        return [promised for promised, _ in pairs], [score for _, score in pairs]

    def count_since(self, since: dt.datetime | None) -> int:
        query = select(func.count()).select_from(Job).where(Job.score.is_not(None))
        if since is not None:
            query = query.where(Job.scored_at > since)
        with self.db.session() as session:
            return int(session.scalar(query) or 0)
