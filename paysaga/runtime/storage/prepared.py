"""Hot statements: compiled once, run on the driver's own connection where that is ours.

SQLAlchemy's execution path costs about 0.1 ms of CPU per statement (the compiled-cache lookup,
the parameters processed into an execution context, the result object, and the hops between the
event loop and SQLAlchemy's greenlet) — several times what SQLite takes for one of our indexed
one-row statements, and the largest single cost of a saga step. So a statement that runs in every
saga is built once, at import, as a Prepared, and run through the unit of work
(``unit.run(prepared, parameters)``):

- on SQLite, whose statements run on the event loop's thread anyway (see
  paysaga.runtime.storage.sqlite_driver), it is compiled once per set of parameter names by
  SQLAlchemy's own compiler and run straight on the sqlite3 connection, inside the write
  transaction (paysaga.runtime.storage.backends.SQLiteBackend.writing), with SQLAlchemy's own
  type processors: the same SQL with the same values, without the machinery around them;
- on any other database it goes through SQLAlchemy as every other statement does.

Limits, checked when a statement is first compiled: no Python-side column defaults (SQLAlchemy
would compute them; nothing here does), and an ``IN`` list only as an expanding bind parameter
(which may be empty, as with SQLAlchemy).
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

Parameters = Mapping[str, Any] | Sequence[Mapping[str, Any]]
Statement = sa.Select[Any] | sa.Insert | sa.Update | sa.Delete
_Processor = Callable[[Any], Any] | None
_EMPTY_SET = "SELECT 1 FROM (SELECT 1) WHERE 1!=1"


class Rows:
    """A statement's rows (read at once: ours are bounded) and how many rows it changed (-1: not
    known, as after many parameter sets on some drivers)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def all(self) -> list[Any]:
        return self._rows

    def first(self) -> Any | None:
        return self._rows[0] if self._rows else None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # the parameters, in the order of the SQL's placeholders
    binders: tuple[_Processor, ...]
    expanding: frozenset[str]
    # Values the statement itself binds (a literal in a WHERE, a bindparam with a value).
    defaults: Mapping[str, Any]
    row: Callable[[tuple[Any, ...]], Any] | None  # builds a row with the columns' names, None: no rows
    readers: tuple[_Processor, ...]

    def arguments(self, parameters: Mapping[str, Any]) -> tuple[str, list[Any]]:
        sql = self.sql
        values: list[Any] = []
        for name, binder in zip(self.names, self.binders, strict=True):
            if name in parameters:
                value = parameters[name]
            elif name in self.defaults:
                value = self.defaults[name]
            else:
                raise ValueError(f"a value is required for the parameter {name!r}")
            if name in self.expanding:
                items = list(value)
                # An empty list as SQLAlchemy renders it: a set with nothing in it.
                placeholders = ", ".join("?" * len(items)) if items else _EMPTY_SET
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", placeholders, 1)
                values.extend(items if binder is None else [binder(item) for item in items])
            else:
                values.append(value if binder is None else binder(value))
        return sql, values

    def rows(self, fetched: list[tuple[Any, ...]]) -> list[Any]:
        assert self.row is not None
        if any(reader is not None for reader in self.readers):
            fetched = [
                tuple(
                    value if reader is None else reader(value) for reader, value in zip(self.readers, row, strict=True)
                )
                for row in fetched
            ]
        return [self.row(row) for row in fetched]


class Prepared:
    """A statement built once; compiled once per dialect and set of parameter names."""

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        self._compiled: dict[tuple[str, frozenset[str]], _Compiled] = {}

    def compiled(self, dialect: Dialect, names: frozenset[str]) -> _Compiled:
        key = (dialect.name, names)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile(dialect, names)
        return found

    def _compile(self, dialect: Dialect, names: frozenset[str]) -> _Compiled:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=sorted(names))
        if compiled.insert_prefetch or compiled.update_prefetch:
            raise ValueError(f"a prepared statement cannot fill Python-side defaults: {compiled.string!r}")
        if compiled.literal_execute_params:
            raise ValueError(f"a prepared statement takes no literal parameters: {compiled.string!r}")
        binds = {name: bind for bind, name in compiled.bind_names.items()}
        order = tuple(compiled.positiontup or ())
        binders = tuple(compiled._bind_processors.get(name) for name in order)
        expanding = frozenset(compiled.bind_names[bind] for bind in compiled.post_compile_params if bind.expanding)
        for name in order:
            if name not in binds:
                raise ValueError(f"unknown parameter {name!r} in {compiled.string!r}")
        defaults = {
            name: binds[name].effective_value
            for name in order
            if name not in names and (binds[name].value is not None or binds[name].callable is not None)
        }
        columns = compiled._result_columns
        row = None
        readers: tuple[_Processor, ...] = ()
        if columns:
            row_type = collections.namedtuple("Row", [column[0] for column in columns])  # type: ignore[misc]
            row = row_type._make
            readers = tuple(column[3].dialect_impl(dialect).result_processor(dialect, None) for column in columns)
        return _Compiled(compiled.string, order, binders, expanding, defaults, row, readers)


class StatementRunner:
    """Runs prepared statements in a transaction: through SQLAlchemy (every database)."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._connection = connection

    async def run(self, prepared: Prepared, parameters: Parameters) -> Rows:
        result = await self._connection.execute(prepared.statement, parameters)
        return Rows(list(result.all()) if result.returns_rows else [], result.rowcount)


class SQLiteRunner(StatementRunner):
    """Runs prepared statements straight on the sqlite3 connection under the transaction's
    AsyncConnection (same transaction, same thread: see the module's docstring). A driver error is
    raised as SQLAlchemy would raise it (DBAPIError), so callers handle one kind."""

    def __init__(self, connection: AsyncConnection, driver: sqlite3.Connection) -> None:
        super().__init__(connection)
        self._driver = driver
        self._dialect = connection.dialect

    async def run(self, prepared: Prepared, parameters: Parameters) -> Rows:
        if isinstance(parameters, Mapping):
            compiled = prepared.compiled(self._dialect, frozenset(parameters))
            sql, values = compiled.arguments(parameters)
            try:
                cursor = self._driver.execute(sql, values)
                fetched = cursor.fetchall() if compiled.row is not None else []
            except sqlite3.Error as error:
                raise DBAPIError.instance(sql, values, error, sqlite3.Error) from error
            return Rows(compiled.rows(fetched) if compiled.row is not None else [], cursor.rowcount)
        if not parameters:
            return Rows([], 0)
        compiled = prepared.compiled(self._dialect, frozenset(parameters[0]))
        if compiled.expanding or compiled.row is not None:
            raise ValueError("many parameter sets: only for statements that return no rows and expand no lists")
        sql = compiled.sql
        rows = [compiled.arguments(each)[1] for each in parameters]
        try:
            cursor = self._driver.executemany(sql, rows)
        except sqlite3.Error as error:
            raise DBAPIError.instance(sql, rows, error, sqlite3.Error) from error
        return Rows([], cursor.rowcount)
