"""Labelled outcomes from the job history: what each model really did (the predictors' teacher).

A label is one attempt's answer with its score (its grade against the job's reference, or
feedback on the accepted answer), so every model a cascade ran on a job teaches: the ex-ante
predictor learns from the prompt and the score, the answer judge from the answers themselves."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select

from scheduler.storage.database import Database
from scheduler.storage.tables import Job, JobAttempt, prompt_text


@dataclass(frozen=True)
class LabelledOutcome:
    prompt_text: str
    model: str
    score: float
    output_tokens: int | None
    answer: str | None = None        # the answer the score judged
    job_id: str | None = None        # labels of one job share it (a cascade's answers judged together)
    attempt: int | None = None
    ex_ante_p: float | None = None   # the model's p predicted from the prompt before it ran (when known)


class LabelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def history(self, limit: int = 100_000) -> list[LabelledOutcome]:
        """The newest ``limit`` scored attempts (graded or fed back), each with its answer."""
        query = (select(Job.prompt, Job.messages, JobAttempt.model, JobAttempt.score, JobAttempt.output_tokens,
                        JobAttempt.answer, JobAttempt.job_id, JobAttempt.attempt, JobAttempt.ex_ante_p)
                 .join(Job, Job.id == JobAttempt.job_id)
                 .where(JobAttempt.score.is_not(None), JobAttempt.answer.is_not(None))
                 .order_by(JobAttempt.scored_at.desc(), JobAttempt.job_id, JobAttempt.attempt).limit(limit))
        with self.db.session() as session:
            rows = session.execute(query).all()
        return [LabelledOutcome(prompt_text(row.prompt, row.messages), str(row.model), float(row.score),
                                row.output_tokens, row.answer, row.job_id, row.attempt, row.ex_ante_p)
                for row in rows]

    def counts_by_model(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(
                select(JobAttempt.model, func.count()).where(JobAttempt.score.is_not(None))
                .group_by(JobAttempt.model)).all()
        return {model: count for model, count in rows if model is not None}

    def recent_promises(self, limit: int) -> tuple[list[float], list[float]]:
        """(promised p, realised score) of the newest ``limit`` labelled jobs the optimizer chose a
        model for (exploring jobs made no promise). A cascaded job's promise is its whole
        cascade's, and its score its accepted answer's."""
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
        """Labels (scored attempts) that arrived after ``since``."""
        query = select(func.count()).select_from(JobAttempt).where(JobAttempt.score.is_not(None))
        if since is not None:
            query = query.where(JobAttempt.scored_at > since)
        with self.db.session() as session:
            return int(session.scalar(query) or 0)
