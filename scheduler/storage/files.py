"""Files of the OpenAI Files API, kept in Postgres (the ``files`` table): batch input files that
tenants upload, and the output and error files Switchyard writes when a batch finishes.

Reads take a ``scope`` (the tenant whose files the caller may see, or None for every tenant's);
a file outside the scope is NotFound, exactly like one that does not exist. Listing and metadata
reads never load a file's content.
"""
from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import ColumnElement, and_, delete, or_, select, true
from sqlalchemy.orm import Session

from scheduler.errors import InvalidRequest, NotFound
from scheduler.storage.database import Database, rows_affected
from scheduler.storage.tables import StoredFile

FILE_ID_PREFIX = "file-"
# What a file's listing row holds: everything but the content.
_INFO_COLUMNS = (StoredFile.id, StoredFile.owner, StoredFile.purpose, StoredFile.filename, StoredFile.bytes,
                 StoredFile.created_at)


@dataclass(frozen=True)
class FileInfo:
    id: str
    owner: str
    purpose: str
    filename: str
    bytes: int
    created_at: dt.datetime


@dataclass(frozen=True)
class FilePage:
    files: list[FileInfo]
    has_more: bool


def new_file(owner: str, purpose: str, filename: str, content: bytes, now: dt.datetime) -> StoredFile:
    """A file row to add in the caller's own transaction (a batch writes its output files in the
    transaction that finishes it)."""
    return StoredFile(id=FILE_ID_PREFIX + uuid.uuid4().hex, owner=owner, purpose=purpose, filename=filename,
                      bytes=len(content), content=content, created_at=now)


class FileStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, owner: str, purpose: str, filename: str, content: bytes, now: dt.datetime) -> FileInfo:
        row = new_file(owner, purpose, filename, content, now)
        with self.db.session() as session:
            session.add(row)
        return _info(row)

    def get(self, scope: str | None, file_id: str) -> FileInfo:
        with self.db.session() as session:
            found = session.execute(select(*_INFO_COLUMNS)
                                    .where(StoredFile.id == file_id, _in_scope(scope))).first()
        if found is None:
            raise NotFound(f"no file {file_id}")
        return FileInfo(*found)

    def content(self, scope: str | None, file_id: str) -> tuple[FileInfo, bytes]:
        with self.db.session() as session:
            found = session.execute(select(*_INFO_COLUMNS, StoredFile.content)
                                    .where(StoredFile.id == file_id, _in_scope(scope))).first()
        if found is None:
            raise NotFound(f"no file {file_id}")
        return FileInfo(*found[:-1]), bytes(found[-1])

    def list_files(self, scope: str | None, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 100, order: Literal["asc", "desc"] = "desc") -> FilePage:
        """Ordered by creation time; ``after`` is the id of the last file of the previous page."""
        query = select(*_INFO_COLUMNS).where(_in_scope(scope))
        if purpose is not None:
            query = query.where(StoredFile.purpose == purpose)
        with self.db.session() as session:
            if after is not None:
                query = query.where(_after(session, scope, after, order))
            newest_first = order == "desc"
            keys = (StoredFile.created_at.desc(), StoredFile.id.desc()) if newest_first else (
                StoredFile.created_at, StoredFile.id)
            rows = session.execute(query.order_by(*keys).limit(limit + 1)).all()
        return FilePage([FileInfo(*row) for row in rows[:limit]], has_more=len(rows) > limit)

    def delete(self, scope: str | None, file_id: str) -> None:
        """Delete a file for good. A batch whose input it was keeps its jobs (they were created
        from it already)."""
        with self.db.session() as session:
            deleted = rows_affected(session.execute(delete(StoredFile).where(StoredFile.id == file_id,
                                                                             _in_scope(scope))))
        if not deleted:
            raise NotFound(f"no file {file_id}")


def _in_scope(scope: str | None) -> ColumnElement[bool]:
    return true() if scope is None else StoredFile.owner == scope


def _after(session: Session, scope: str | None, after: str, order: str) -> ColumnElement[bool]:
    """The keyset condition for files listed after the file ``after``."""
    found = session.execute(select(StoredFile.created_at, StoredFile.id)
                            .where(StoredFile.id == after, _in_scope(scope))).first()
    if found is None:
        raise InvalidRequest(f"after={after!r} is not one of your files; pass the id of the last file of the "
                             "previous page")
    created_at, file_id = found
    if order == "desc":
        return or_(StoredFile.created_at < created_at,
                   and_(StoredFile.created_at == created_at, StoredFile.id < file_id))
    return or_(StoredFile.created_at > created_at,
               and_(StoredFile.created_at == created_at, StoredFile.id > file_id))


def _info(row: StoredFile) -> FileInfo:
    return FileInfo(row.id, row.owner, row.purpose, row.filename, row.bytes, row.created_at)
