"""The predictions every replica shares, in Redis: a prediction waits for its label under its id, a label
joins it exactly once, and joined rows wait in a stream until some replica writes them to S3.

Keys share one hash tag per model (`fbl:{<model>}:…`), so the join script also runs on a Redis Cluster.
- `p:<id>`: the stored prediction (features, prediction, version, time), with the prediction TTL. When a
  label joins, the value becomes a tombstone with the same TTL: a second label is a duplicate, not unknown.
- `s:<id>`: a shadow candidate's prediction of the same row (its version and prediction), stored after the
  answer with the same TTL; the join returns it beside the record and deletes it.
- `labels`: the stream of joined rows; consumer group `sink`, one consumer per server pod. A row leaves the
  stream only after the Parquet object holding it is in S3 (XACK, XDEL); a dead pod's rows are claimed by
  another after they sat idle. `labels-set-aside`: rows that cannot be encoded, kept for inspection.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as redis
from redis.exceptions import RedisError, ResponseError

from feedbackloop_serve.sink import StreamRow

GROUP = "sink"
SAVE_CHUNK = 500
TOMBSTONE = b"\x00labelled"
# One call per request. KEYS: the predictions' keys. ARGV: the TTL, then one record per key.
_SAVE = """
for index, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[index + 1], 'EX', ARGV[1])
end
return #KEYS
"""
# One call per request, each label atomic: the prediction must exist and be unlabelled, and the stream must
# have room. KEYS: the stream, then the predictions' keys, then their shadow keys. ARGV: tombstone, bound,
# keep rows, labelled at, then id and label per key. Returns, per label, its status and (when joined) the
# record and the shadow prediction ('' when there is none).
_JOIN = """
local tombstone, bound, keep, at = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', ARGV[4]
local count = (#KEYS - 1) / 2
local answers = {}
for index = 2, count + 1 do
  local record = redis.call('GET', KEYS[index])
  local id, label = ARGV[3 + 2 * (index - 1)], ARGV[4 + 2 * (index - 1)]
  local status, shadow = 'joined', ''
  if not record then
    status, record = 'unknown', ''
  elseif record == tombstone then
    status, record = 'duplicate', ''
  elseif keep and redis.call('XLEN', KEYS[1]) >= bound then
    status, record = 'full', ''
  else
    redis.call('SET', KEYS[index], tombstone, 'KEEPTTL')
    if keep then
      redis.call('XADD', KEYS[1], '*', 'id', id, 'record', record, 'label', label, 'at', at)
    end
    shadow = redis.call('GET', KEYS[index + count]) or ''
    if shadow ~= '' then
      redis.call('DEL', KEYS[index + count])
    end
  end
  answers[#answers + 1] = status; answers[#answers + 1] = record; answers[#answers + 1] = shadow
end
return answers
"""


class StoreUnavailableError(Exception):
    """Redis did not answer; nothing was acknowledged, so the caller can say so and the client retry."""


class JoinStatus(enum.StrEnum):
    JOINED = "joined"
    UNKNOWN = "unknown"  # never stored, or its TTL passed
    DUPLICATE = "duplicate"
    FULL = "full"  # the stream of rows waiting for S3 is at its bound


@dataclass(frozen=True)
class Join:
    status: JoinStatus
    record: bytes = b""
    shadow: bytes = b""  # a shadow candidate's prediction of the row, when one was stored before the label


@dataclass(frozen=True)
class Label:
    prediction_id: str
    label_json: bytes
    labelled_at_ms: int


class PredictionStore:
    def __init__(
        self, client: redis.Redis, model: str, ttl_seconds: int, stream_bound: int, keep_rows: bool
    ) -> None:
        tag = model.replace("{", "").replace("}", "")
        self._client = client
        self._prefix = f"fbl:{{{tag}}}:".encode()
        self.stream = self._prefix + b"labels"
        self.set_aside_stream = self._prefix + b"labels-set-aside"
        self._ttl = ttl_seconds
        self._bound = stream_bound
        self._keep_rows = b"1" if keep_rows else b"0"  # no feedback prefix: count labels, keep no rows
        self._save = client.register_script(_SAVE)
        self._join = client.register_script(_JOIN)

    @classmethod
    def connect(
        cls, url: str, model: str, ttl_seconds: int, stream_bound: int, keep_rows: bool
    ) -> PredictionStore:
        # Short timeouts: a slow store must not hold a prediction's answer for long.
        client = redis.Redis.from_url(
            url, socket_timeout=1.0, socket_connect_timeout=1.0, health_check_interval=30
        )
        return cls(client, model, ttl_seconds, stream_bound, keep_rows)

    def _key(self, prediction_id: str) -> bytes:
        return self._prefix + b"p:" + prediction_id.encode()

    def _shadow_key(self, prediction_id: str) -> bytes:
        return self._prefix + b"s:" + prediction_id.encode()

    async def prepare(self) -> None:
        try:
            await self._client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise StoreUnavailableError(str(err)) from err
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err

    async def save(self, records: Sequence[tuple[str, bytes]]) -> None:
        """Every prediction of one request; a large batch in calls of SAVE_CHUNK, so neither Redis nor the
        event loop is held for long by one call."""
        await self._save_all(self._key, records)

    async def save_shadow(self, predictions: Sequence[tuple[str, bytes]]) -> None:
        """A shadow candidate's predictions, under the ids the champion's answer gave, with the same TTL."""
        await self._save_all(self._shadow_key, predictions)

    async def _save_all(self, key_of: Callable[[str], bytes], values: Sequence[tuple[str, bytes]]) -> None:
        try:
            for start in range(0, len(values), SAVE_CHUNK):
                chunk = values[start : start + SAVE_CHUNK]
                keys = [key_of(prediction_id) for prediction_id, _ in chunk]
                await self._save(keys=keys, args=[self._ttl, *(value for _, value in chunk)])
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err

    async def join(self, labels: Sequence[Label]) -> list[Join]:
        """Every label of one request in one call; all share one labelled-at time."""
        if not labels:
            return []
        keys = [
            self.stream,
            *(self._key(label.prediction_id) for label in labels),
            *(self._shadow_key(label.prediction_id) for label in labels),
        ]
        args: list[bytes | int | str] = [TOMBSTONE, self._bound, self._keep_rows, labels[0].labelled_at_ms]
        for label in labels:
            args += [label.prediction_id, label.label_json]
        try:
            answer = cast(list[bytes], await self._join(keys=keys, args=args))
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err
        return [
            Join(JoinStatus(answer[i].decode()), answer[i + 1], answer[i + 2])
            for i in range(0, len(answer), 3)
        ]

    # ---------------------------------------------------------------- the stream, for the S3 writer
    async def own_pending(self, consumer: str, count: int) -> list[StreamRow]:
        """Rows this consumer read before and has not written yet (a failed upload, or a restart)."""
        return await self._read(consumer, count, b"0")

    async def claim_idle(self, consumer: str, count: int, idle_ms: int) -> list[StreamRow]:
        """Rows another consumer read and left idle this long: its pod died before writing them."""
        try:
            answer = await self._client.xautoclaim(self.stream, GROUP, consumer, idle_ms, "0-0", count=count)
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err
        return [_row(entry_id, fields) for entry_id, fields in answer[1] if fields]

    async def read_new(self, consumer: str, count: int) -> list[StreamRow]:
        return await self._read(consumer, count, b">")

    async def _read(self, consumer: str, count: int, start: bytes) -> list[StreamRow]:
        try:
            answer = await self._client.xreadgroup(GROUP, consumer, {self.stream: start}, count=count)
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err
        streams = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], answer or [])
        return [_row(entry_id, fields) for _, entries in streams for entry_id, fields in entries if fields]

    async def done(self, rows: Sequence[StreamRow]) -> None:
        """The rows are in S3 (or set aside): they leave the stream."""
        ids = [row.entry_id for row in rows]
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xack(self.stream, GROUP, *ids)
                pipe.xdel(self.stream, *ids)
                await pipe.execute()
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err

    async def set_aside(self, row: StreamRow, error: str) -> None:
        fields: dict[str | bytes, str | bytes | int] = {
            "id": row.prediction_id,
            "record": row.record,
            "label": row.label_json,
            "at": row.labelled_at_ms,
            "error": error,
        }
        try:
            await self._client.xadd(self.set_aside_stream, fields)  # type: ignore[arg-type]
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err

    async def waiting(self) -> int:
        try:
            return int(await self._client.xlen(self.stream))
        except RedisError as err:
            raise StoreUnavailableError(str(err)) from err

    async def close(self) -> None:
        await self._client.aclose()


def _row(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamRow:
    return StreamRow(
        entry_id=entry_id,
        prediction_id=fields[b"id"].decode(),
        record=fields[b"record"],
        label_json=fields[b"label"],
        labelled_at_ms=int(fields[b"at"]),
    )
