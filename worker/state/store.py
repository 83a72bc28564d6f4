"""Per-stream recurrent state in Redis: batched reads, fenced atomic writes with a TTL.

- Key: ``<prefix>:<model>:<state-version>:<stream>`` (:func:`state_key`).
- Value: :mod:`statecast.worker.state.codec` (fixed header with the last applied partition/offset,
  then raw float32 bytes). State and offset live in one value, so one SET writes both
  atomically.
- ``read_many``: one MGET on a single Redis. On a cluster MGET cannot span slots, so keys
  are grouped by hash slot, one MGET per slot, sent as one pipeline per node (redis-py
  sends the node pipelines concurrently); results come back in input order.
- ``write_many``: one EVALSHA of :data:`FENCED_WRITE_LUA` per batch (per slot on a
  cluster, pipelined per node). The script skips a write whose last offset is at or below
  the stored offset of that partition (any partition the stream used: the value carries a
  bounded table of them), or that would move any of the stored partitions backwards (a
  zombie worker that lost its partitions in a rebalance cannot roll a stream's state
  back), and every write sets the TTL (a skipped one refreshes it: the stream is alive).
  A key holding another Redis type (a list, a hash: a value we did not write) would make
  ``GET`` fail with WRONGTYPE half-way through the batch, and Redis does not roll a script
  back; the script reads with ``pcall`` instead, replaces such a key and reports it, so
  the stream is reset and counted and the batch goes on. NOSCRIPT (Redis restarted or
  flushed) loads the script and retries only the calls that did not run; a script that
  never ran changed nothing, so the retry cannot apply anything twice.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import NoScriptError

from statecast.contract.spec import StateSpec
from statecast.worker.state.codec import (
    EARLIER_COUNT_POS,
    EARLIER_POS,
    HEADER_FIXED_SIZE,
    MAX_PARTITIONS,
    OFFSET_POS,
    PARTITION_POS,
    ReadResult,
    ReadStatus,
    StateCodec,
    StoredState,
)
from statecast.worker.state.redis_conn import RedisClient

log = logging.getLogger(__name__)

# KEYS[i]: a state key; ARGV[1]: TTL in ms; ARGV[i + 1]: the new value of KEYS[i].
# Returns {skipped, replaced}: the 1-based indices of the writes the fence skipped and of
# the keys that held another Redis type. Positions are 1-based in Lua.
FENCED_WRITE_LUA = f"""
local ttl = ARGV[1]
local hdr, pp, op = {HEADER_FIXED_SIZE}, {PARTITION_POS + 1}, {OFFSET_POS + 1}
local kp, ep = {EARLIER_COUNT_POS + 1}, {EARLIER_POS + 1}
local function offsets(v)
  local t = {{}}
  t[struct.unpack('<i4', v, pp)] = struct.unpack('<i8', v, op)
  for j = 0, string.byte(v, kp) - 1 do
    local p = struct.unpack('<i4', v, ep + 12 * j)
    if t[p] == nil then t[p] = struct.unpack('<i8', v, ep + 12 * j + 4) end
  end
  return t
end
local skipped, replaced = {{}}, {{}}
for i = 1, #KEYS do
  local key = KEYS[i]
  local new = ARGV[i + 1]
  local ok, old = pcall(redis.call, 'GET', key)
  if not ok then
    replaced[#replaced + 1] = i
    old = false
  end
  -- The fence guards only a stored value of the same layout (a state this model can
  -- read); anything else (other shapes, corrupt bytes) is replaced.
  local layout_end = hdr + string.byte(new, 8) + 8 * string.byte(new, 7)
  local stale = false
  if old and #old == #new
      and string.sub(old, 1, 8) == string.sub(new, 1, 8)
      and string.sub(old, hdr + 1, layout_end) == string.sub(new, hdr + 1, layout_end) then
    local was, now = offsets(old), offsets(new)
    local np = struct.unpack('<i4', new, pp)
    local applied = was[np]
    stale = applied ~= nil and struct.unpack('<i8', new, op) <= applied
    -- A new value is computed from the stored one, so it carries every stored partition
    -- at the same or a later offset; a partition behind, or missing from a table that is
    -- not full (a full one drops its least recent), means it was computed from an older
    -- state: the stored one already holds records it lacks.
    local full = string.byte(new, kp) >= {MAX_PARTITIONS - 1}
    for p, o in pairs(was) do
      if now[p] == nil then
        if not full then stale = true end
      elseif o > now[p] then
        stale = true
      end
    end
  end
  if stale then
    redis.call('PEXPIRE', key, ttl)
    skipped[#skipped + 1] = i
  else
    redis.call('SET', key, new, 'PX', ttl)
  end
end
return {{skipped, replaced}}
"""
FENCED_WRITE_SHA = hashlib.sha1(FENCED_WRITE_LUA.encode()).hexdigest()


@dataclass
class WriteResult:
    skipped: list[str]  # keys whose write the offset fence skipped
    replaced: list[str]  # keys that held another Redis type (a value we did not write)


def state_key(prefix: str, model: str, state_version: str, stream: str) -> str:
    """``<prefix>:<model>:<state-version>:<stream>``; the stream id may itself hold ':'."""
    return f"{prefix}:{model}:{state_version}:{stream}"


class StateStore:
    """The states of one model (one state spec and state version) in Redis."""

    def __init__(
        self,
        client: RedisClient,
        ttl_s: int,
        spec_states: tuple[StateSpec, ...],
        state_version: str,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive: every state write sets a TTL")
        self._client = client
        self._cluster = isinstance(client, RedisCluster)
        self._ttl_ms = int(ttl_s) * 1000
        self.codec = StateCodec(spec_states, state_version)

    # -- reads ----------------------------------------------------------------------------

    async def read_many(self, keys: Sequence[str]) -> list[ReadResult]:
        """The stored state of every key, in input order, in one round trip (per node)."""
        if not keys:
            return []
        if self._cluster:
            values = await self._mget_by_slot(keys)
        else:
            values = cast("list[bytes | None]", await self._client.mget(keys))
        decode = self.codec.decode
        return [decode(v) for v in values]

    async def _mget_by_slot(self, keys: Sequence[str]) -> list[bytes | None]:
        groups = _group_by_slot(keys)
        pipe = self._client.pipeline()
        for indices in groups:
            # redis-py blocks pipe.mget() on a cluster; the raw command routes by its keys.
            pipe.execute_command("MGET", *[keys[i] for i in indices])
        replies: list[Any] = await pipe.execute()
        values: list[bytes | None] = [None] * len(keys)
        for indices, reply in zip(groups, replies, strict=True):
            for i, v in zip(indices, reply, strict=True):
                values[i] = v
        return values

    # -- writes ---------------------------------------------------------------------------

    async def write_many(self, items: Sequence[tuple[str, StoredState]]) -> list[str]:
        """Write each state with its offset atomically, set the TTL, apply the fence.

        Returns the keys whose write the offset fence skipped (another writer already
        stored that offset or a later one)."""
        return (await self.write_many_detailed(items)).skipped

    async def write_many_detailed(self, items: Sequence[tuple[str, StoredState]]) -> WriteResult:
        """:meth:`write_many`, also naming the keys that held another Redis type (replaced)."""
        out = WriteResult([], [])
        if not items:
            return out
        encode = self.codec.encode
        keys = [k for k, _ in items]
        values = [encode(s) for _, s in items]
        if self._cluster:
            await self._write_by_slot(keys, values, out)
        else:
            skipped, replaced = await self._evalsha_loading(keys, values)
            out.skipped.extend(keys[i - 1] for i in skipped)
            out.replaced.extend(keys[i - 1] for i in replaced)
        if out.skipped:
            log.debug("offset fence skipped %d of %d state writes", len(out.skipped), len(keys))
        return out

    async def _evalsha_loading(
        self, keys: list[str], values: list[bytes]
    ) -> tuple[list[int], list[int]]:
        try:
            reply: list[list[int]] = await self._client.evalsha(
                FENCED_WRITE_SHA, len(keys), *keys, self._ttl_ms, *values
            )
        except NoScriptError:
            await self._load_script()
            reply = await self._client.evalsha(
                FENCED_WRITE_SHA, len(keys), *keys, self._ttl_ms, *values
            )
        return reply[0], reply[1]

    async def _write_by_slot(self, keys: list[str], values: list[bytes], out: WriteResult) -> None:
        pending = _group_by_slot(keys)
        for attempt in range(2):
            pipe = self._client.pipeline()
            for indices in pending:
                pipe.execute_command(
                    "EVALSHA",
                    FENCED_WRITE_SHA,
                    len(indices),
                    *[keys[i] for i in indices],
                    self._ttl_ms,
                    *[values[i] for i in indices],
                )
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            retry: list[list[int]] = []
            for indices, reply in zip(pending, replies, strict=True):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    retry.append(indices)
                elif isinstance(reply, BaseException):
                    raise reply
                else:
                    out.skipped.extend(keys[indices[j - 1]] for j in reply[0])
                    out.replaced.extend(keys[indices[j - 1]] for j in reply[1])
            if not retry:
                break
            await self._load_script()
            pending = retry

    async def _load_script(self) -> None:
        # On a cluster redis-py sends SCRIPT LOAD to every primary.
        sha = await self._client.script_load(FENCED_WRITE_LUA)
        if sha != FENCED_WRITE_SHA:
            raise RuntimeError(
                f"Redis hashed the fence script to {sha}, expected {FENCED_WRITE_SHA}"
            )
        log.info("loaded the state write script into Redis (sha %s)", sha[:12])


def _group_by_slot(keys: Sequence[str]) -> list[list[int]]:
    """Indices of ``keys`` grouped by Redis Cluster hash slot, in first-seen order."""
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(key_slot(k.encode()), []).append(i)
    return list(groups.values())


__all__ = [
    "FENCED_WRITE_LUA",
    "ReadResult",
    "ReadStatus",
    "StateStore",
    "StoredState",
    "WriteResult",
    "state_key",
]
