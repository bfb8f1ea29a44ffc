"""Keyset pagination, the one way every List RPC pages: rows after the last one seen, in key order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from paysaga.core.validation import PageRequest


@dataclass(frozen=True)
class Page:
    rows: list[sa.Row[Any]]
    next_page_token: str  # "" on the last page


async def page(
    connection: AsyncConnection, query: sa.Select[Any], key: sa.ColumnElement[int], request: PageRequest
) -> Page:
    """One page of query's rows, ordered by key (a unique, increasing row number), after the
    request's token. One row more than the page is read, to know whether another page follows."""
    rows = (await connection.execute(query.where(key > request.after).order_by(key).limit(request.size + 1))).all()
    if len(rows) <= request.size:
        return Page(list(rows), "")
    return Page(list(rows[: request.size]), str(rows[request.size - 1]._mapping[key]))
