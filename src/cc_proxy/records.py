"""Compare records: each compare-mode request's two answers side by side, kept in SQLite.

`CompareRecorder` is an observer. On the event loop it only copies what it needs of the
primary and shadow exchanges (their figures and a bounded copy of each answer) and pairs
them by correlation id; a writer thread then puts each answer back together, compares
the two and writes the records in batches, so that the client's request pays for none of
it. `close` (at shutdown) writes whatever is still queued.

`RecordStore` is the database: one table, WAL mode, retention by count and age. Readers
(the admin API, `cc-proxy compare-report`) open their own connections.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from cc_proxy.answers import answer_message, message_text, tool_calls
from cc_proxy.config import CompareSettings
from cc_proxy.exchange import AnswerCopy, Exchange, Observer, Outcome, Role
from cc_proxy.modes import Mode

log = logging.getLogger("cc_proxy.records")

# Each side's answer is copied up to this size to be put back together: enough for the
# tool inputs of a long answer (a file written whole), bounded for memory.
MAX_RECORDED_ANSWER = 1024 * 1024
# At most this many records are written in one transaction.
MAX_BATCH = 500
MAX_PAGE = 500
AGREEMENT_KEYS = ("stop_reason", "first_tool", "first_tool_args")
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT PRIMARY KEY,
    time_us INTEGER NOT NULL,
    session_id TEXT,
    requested_model TEXT,
    rewritten_model TEXT,
    disagrees INTEGER NOT NULL,
    summary BLOB NOT NULL,
    record BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_time ON records (time_us DESC, id DESC);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session_id, time_us DESC);
"""


# --- what the event loop keeps of an exchange ----------------------------------------------


@dataclass(slots=True)
class Captured:
    """One side as it ended: its figures, and its answer still as relayed."""

    upstream: str
    status: int | None
    error_type: str | None
    ttft_ms: float | None
    duration_ms: float | None
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int
    stop_reason: str | None
    stream: bool
    dropped: bool
    answer: bytes
    answer_cut: bool  # the copy holds less than the whole answer

    @classmethod
    def of(cls, exchange: Exchange, copy: AnswerCopy | None) -> Captured:
        usage = exchange.usage
        dropped = exchange.outcome is Outcome.DROPPED
        return cls(
            upstream=exchange.upstream,
            status=exchange.status,
            error_type=None if dropped else exchange.error_kind,
            ttft_ms=_rounded(exchange.ttft_ms),
            duration_ms=None if dropped else _rounded(exchange.duration_ms),
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_creation_input_tokens=usage.cache_creation_input_tokens,
            cache_read_input_tokens=usage.cache_read_input_tokens,
            stop_reason=usage.stop_reason,
            stream=exchange.stream,
            dropped=dropped,
            answer=b"" if copy is None else bytes(copy.data),
            answer_cut=copy is not None and copy.size > len(copy.data),
        )


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


@dataclass(slots=True)
class Pair:
    """A compare-mode request while its two sides are under way."""

    id: str
    time: float  # epoch seconds at the primary's start
    session_id: str | None = None
    requested_model: str | None = None
    rewritten_model: str | None = None
    primary: Captured | None = None
    shadow: Captured | None = None
    shadow_started: bool = False
    copies: dict[Role, AnswerCopy] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.primary is not None and (self.shadow is not None or not self.shadow_started)


# --- records: built in the writer thread ---------------------------------------------------


def build_record(pair: Pair, max_text_bytes: int) -> dict[str, Any]:
    primary = _side(pair.primary, max_text_bytes)
    shadow = _side(pair.shadow, max_text_bytes)
    return {
        "id": pair.id,
        "time": iso_time(int(pair.time * 1_000_000)),
        "session_id": pair.session_id,
        "requested_model": pair.requested_model,
        "rewritten_model": pair.rewritten_model,
        "primary": primary,
        "shadow": shadow,
        "agreement": agreement(primary, shadow),
    }


def _side(captured: Captured | None, max_text_bytes: int) -> dict[str, Any]:
    if captured is None:  # a shadow still running when the process stopped (never at SIGTERM)
        captured = Captured(
            "target", None, "unfinished", None, None, 0, 0, 0, 0, None, False, False, b"", False
        )
    message = answer_message(captured.answer, stream=captured.stream) if captured.answer else None
    text = message_text(message).encode() if message else b""
    return {
        "upstream": captured.upstream,
        "status": captured.status,
        "error_type": captured.error_type,
        "ttft_ms": captured.ttft_ms,
        "duration_ms": captured.duration_ms,
        "input_tokens": captured.input_tokens,
        "output_tokens": captured.output_tokens,
        "cache_creation_input_tokens": captured.cache_creation_input_tokens,
        "cache_read_input_tokens": captured.cache_read_input_tokens,
        "stop_reason": captured.stop_reason,
        "tool_calls": tool_calls(message) if message else [],
        # cut on a character boundary: "ignore" drops a partial last character
        "text": text[:max_text_bytes].decode("utf-8", "ignore"),
        "text_truncated": len(text) > max_text_bytes or captured.answer_cut,
        "dropped": captured.dropped,
    }


def answered(side: Mapping[str, Any]) -> bool:
    """The side gave a whole answer: sent, not failed."""
    return not side["dropped"] and side["error_type"] is None


def agreement(primary: Mapping[str, Any], shadow: Mapping[str, Any]) -> dict[str, bool | None]:
    """Whether the two answers agree. None where there is nothing to compare: a side that
    failed or was dropped, no stop reason, or no tool called by either side."""
    if not (answered(primary) and answered(shadow)):
        return dict.fromkeys(AGREEMENT_KEYS)
    stop: bool | None = None
    if primary["stop_reason"] is not None and shadow["stop_reason"] is not None:
        stop = primary["stop_reason"] == shadow["stop_reason"]
    first = primary["tool_calls"][:1]
    other = shadow["tool_calls"][:1]
    tool: bool | None = None
    args: bool | None = None
    if first or other:
        tool = bool(first and other and first[0]["name"] == other[0]["name"])
        args = tool and first[0]["input"] == other[0]["input"]
    return {"stop_reason": stop, "first_tool": tool, "first_tool_args": args}


def disagrees(record: Mapping[str, Any]) -> bool:
    return False in record["agreement"].values()


def summary_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record without its content: no text, tool calls by name only."""

    def side(full: Mapping[str, Any]) -> dict[str, Any]:
        kept = {key: value for key, value in full.items() if key != "text"}
        kept["tool_calls"] = [{"name": call["name"]} for call in full["tool_calls"]]
        return kept

    return {**record, "primary": side(record["primary"]), "shadow": side(record["shadow"])}


def iso_time(time_us: int) -> str:
    moment = datetime.fromtimestamp(time_us / 1_000_000, UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


# --- the database --------------------------------------------------------------------------


class BadCursor(ValueError):
    """A `cursor` that no page of `GET /api/compare` gave."""


@dataclass(frozen=True, slots=True)
class Page:
    records: list[dict[str, Any]]
    next_cursor: str | None


class RecordStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def open_for_writing(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # WAL: readers (the API, compare-report) never wait for the writer, nor it for them.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return connection

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection for one read, or None while no record was ever written."""
        if not self.path.exists():
            yield None
            return
        with closing(sqlite3.connect(self.path, isolation_level=None)) as connection:
            connection.execute("PRAGMA query_only=ON")
            has_table = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
            ).fetchone()
            yield connection if has_table else None

    @staticmethod
    def write(
        connection: sqlite3.Connection,
        records: list[dict[str, Any]],
        *,
        max_records: int,
        max_age_secs: float,
        now: float | None = None,
    ) -> None:
        rows = [
            (
                record["id"],
                _time_us(record["time"]),
                record["session_id"],
                record["requested_model"],
                record["rewritten_model"],
                int(disagrees(record)),
                orjson.dumps(summary_of(record)),
                orjson.dumps(record),
            )
            for record in records
        ]
        oldest_kept = int(((time.time() if now is None else now) - max_age_secs) * 1_000_000)
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows
            )
            connection.execute("DELETE FROM records WHERE time_us < ?", (oldest_kept,))
            connection.execute(
                "DELETE FROM records WHERE (time_us, id) <= ("
                " SELECT time_us, id FROM records ORDER BY time_us DESC, id DESC"
                " LIMIT 1 OFFSET ?)",
                (max_records,),
            )
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def get(self, record_id: str) -> dict[str, Any] | None:
        with self._reading() as connection:
            if connection is None:
                return None
            row = connection.execute(
                "SELECT record FROM records WHERE id = ?", (record_id,)
            ).fetchone()
        return None if row is None else _loads(row[0])

    def page(
        self,
        *,
        session: str | None = None,
        model: str | None = None,
        only_disagreements: bool = False,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Summaries, newest first; `next_cursor` continues after the last one."""
        where: list[str] = []
        values: list[Any] = []
        if session is not None:
            where.append("session_id = ?")
            values.append(session)
        if model is not None:
            where.append("(requested_model = ? OR rewritten_model = ?)")
            values += [model, model]
        if only_disagreements:
            where.append("disagrees = 1")
        if cursor is not None:
            where.append("(time_us, id) < (?, ?)")
            values += _parse_cursor(cursor)
        sql = "SELECT time_us, id, summary FROM records"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY time_us DESC, id DESC LIMIT ?"
        values.append(limit + 1)
        with self._reading() as connection:
            rows = [] if connection is None else connection.execute(sql, values).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = f"{rows[-1][0]}.{rows[-1][1]}" if more else None
        return Page([_loads(row[2]) for row in rows], next_cursor)

    def summaries(self, since: datetime | None = None) -> list[dict[str, Any]]:
        """Every summary since `since` (all when None), newest first."""
        floor = 0 if since is None else int(since.timestamp() * 1_000_000)
        with self._reading() as connection:
            if connection is None:
                return []
            rows = connection.execute(
                "SELECT summary FROM records WHERE time_us >= ? ORDER BY time_us DESC, id DESC",
                (floor,),
            ).fetchall()
        return [_loads(row[0]) for row in rows]


def _loads(raw: bytes | str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads(raw)
    return value


def _time_us(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp() * 1_000_000)


def _parse_cursor(cursor: str) -> list[Any]:
    time_us, sep, record_id = cursor.partition(".")
    if not sep or not time_us.isdigit() or not record_id:
        raise BadCursor(f"cursor {cursor!r} is not one that GET /api/compare gave")
    return [int(time_us), record_id]


# --- the observer and its writer thread ----------------------------------------------------

_STOP = object()


class CompareRecorder(Observer):
    """Pairs each compare-mode request's primary and shadow exchanges into one record."""

    only_modes = frozenset({Mode.COMPARE})

    def __init__(self, settings: CompareSettings) -> None:
        self.settings = settings
        self.store = RecordStore(settings.db_path)
        self._pending: dict[str, Pair] = {}
        self._queue: queue.SimpleQueue[Pair | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.written = 0  # records written so far (the tests watch this)

    def on_start(self, exchange: Exchange) -> None:
        if exchange.mode is not Mode.COMPARE or not exchange.is_messages:
            return
        if exchange.role is Role.PRIMARY:
            pair = Pair(exchange.id, time.time())
            self._pending[exchange.id] = pair
        else:
            found = self._pending.get(exchange.id)
            if found is None:
                return
            pair = found
            pair.shadow_started = True
            pair.rewritten_model = exchange.model
        pair.copies[exchange.role] = AnswerCopy(MAX_RECORDED_ANSWER)

    def body_watcher(self, exchange: Exchange) -> Callable[[bytes], None] | None:
        pair = self._pending.get(exchange.id)
        copy = None if pair is None else pair.copies.get(exchange.role)
        return None if copy is None else copy.keep

    def on_end(self, exchange: Exchange) -> None:
        pair = self._pending.get(exchange.id)
        if pair is None or exchange.mode is not Mode.COMPARE or not exchange.is_messages:
            return
        captured = Captured.of(exchange, pair.copies.pop(exchange.role, None))
        if exchange.role is Role.PRIMARY:
            pair.primary = captured
            # known once the body is read, after the exchange started
            pair.session_id = exchange.session_id
            pair.requested_model = exchange.requested_model
        else:
            pair.shadow = captured
        if not pair.complete:
            return
        del self._pending[exchange.id]
        # A request refused before its copy went out (bad body, client gone) compares nothing.
        if pair.shadow_started:
            self._submit(pair)

    def _submit(self, pair: Pair) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._write_batches, name="cc-proxy-records", daemon=True
                    )
                    self._thread.start()
        self._queue.put(pair)

    def close(self) -> None:
        """Write every record still queued or half-paired. Blocks: run it in a thread."""
        for pair in self._pending.values():
            if pair.primary is not None and pair.shadow_started:
                self._submit(pair)
        self._pending.clear()
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()

    def _write_batches(self) -> None:
        connection: sqlite3.Connection | None = None
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self.settings.batch_secs
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            try:
                if connection is None:
                    connection = self.store.open_for_writing()
                self._write(connection, [p for p in batch if isinstance(p, Pair)])
            except Exception:
                log.exception(
                    "could not write %d compare records to %s", len(batch), self.store.path
                )
        if connection is not None:
            connection.close()

    def _write(self, connection: sqlite3.Connection, batch: list[Pair]) -> None:
        settings = self.settings
        records = [build_record(pair, settings.max_text_bytes) for pair in batch]
        RecordStore.write(
            connection,
            records,
            max_records=settings.max_records,
            max_age_secs=settings.max_age_days * 86400,
        )
        self.written += len(records)
