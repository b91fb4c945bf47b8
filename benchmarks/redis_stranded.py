"""What the once-a-minute stranded-sagas count costs Redis, before and after ``P:defs``.

The count is one Lua script, and Redis runs nothing else while it runs. Before, it read the
hash of up to 10,000 sagas per active status (``OLD_STRANDED`` below, kept here for the A/B);
now it walks the definitions (``_redis_scripts.STRANDED``). This fills a fresh prefix with
``--n`` active sagas of one known definition (a third PENDING, RUNNING, COMPENSATING, no lease:
the old script's worst case from 30,000 up) and one saga of an unknown definition, then times
both scripts' round trips, interleaved, ``--rounds`` times; both must give the same answer.

It also prices what keeping ``P:defs`` costs each transition that enters a claim index: one
``SADD`` of a member already there, timed as 100,000 of them in one script against an empty
loop of the same length (server time, from ``TIME`` inside the scripts).

    flock -x /tmp/sagaway-bench.lock .venv/bin/python benchmarks/redis_stranded.py --n 30000

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

from sagaway.state import NewSaga, SagaStatus
from sagaway.store import _redis_scripts as lua
from sagaway.store.redis import RedisStore

NOW = 1_700_000_000.0

OLD_STRANDED = (
    lua._LIB
    + """
local now, me, scan = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local counts, order = {}, {}
for status, _ in pairs(ACTIVE) do
  for _, id in ipairs(redis.call('ZRANGE', P .. ':status:' .. status, 0, scan - 1)) do
    local f = redis.call('HMGET', P .. ':saga:' .. id, 'name', 'version', 'owner', 'lease')
    if f[1] and (not f[3] or f[3] == me or not f[4] or tonumber(f[4]) < now) then
      local d = f[2] .. ':' .. f[1]
      if not counts[d] then
        counts[d] = {f[1], f[2], 0}
        order[#order + 1] = d
      end
      counts[d][3] = counts[d][3] + 1
    end
  end
end
local out = {}
for _, d in ipairs(order) do
  out[#out + 1] = counts[d][1]
  out[#out + 1] = counts[d][2]
  out[#out + 1] = counts[d][3]
end
return out
"""
)

# Server-side microseconds of `n` SADDs of one member already in the set, and of the bare loop.
SADD_COST = """
local t0 = redis.call('TIME')
for i = 1, tonumber(ARGV[2]) do redis.call('SADD', KEYS[1], 'v:x') end
local t1 = redis.call('TIME')
for i = 1, tonumber(ARGV[2]) do local _ = 'v' .. ':' .. 'x' end
local t2 = redis.call('TIME')
local function us(a, b) return (b[1] - a[1]) * 1000000 + (b[2] - a[2]) end
return {us(t0, t1), us(t1, t2)}
"""

STATUSES = (SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING)


async def fill(store: RedisStore, n: int) -> None:
    def new(i: int) -> NewSaga:
        status = STATUSES[i % 3]
        return NewSaga(id=f"s{i}", name="known", version=1, input=None, at=NOW, status=status)

    for first in range(0, n, 2000):
        await asyncio.gather(*(store.create(new(i)) for i in range(first, min(n, first + 2000))))
    await store.create(
        NewSaga(id="lost", name="lost", version=1, input=None, at=NOW, status=SagaStatus.PENDING)
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    load_start = os.getloadavg()
    url = f"{args.url}?prefix=sagaway-bench-stranded-{uuid.uuid4().hex[:8]}"
    async with RedisStore(url) as store:
        try:
            await fill(store, args.n)
            client = store.redis
            old_sha = await client.script_load(OLD_STRANDED)
            new_sha = await client.script_load(lua.STRANDED)
            calls = {
                "old": (old_sha, [store.prefix, repr(NOW), "me", "10000"]),
                "new": (new_sha, [store.prefix, repr(NOW), "me", "known", "1"]),
            }
            ms: dict[str, list[float]] = {"old": [], "new": []}
            for _ in range(args.rounds):
                for side, (sha, argv) in calls.items():
                    started = time.perf_counter()
                    reply = await client.evalsha(sha, 0, *argv)
                    ms[side].append((time.perf_counter() - started) * 1000)
                    found = {
                        (reply[i], int(reply[i + 1])): int(reply[i + 2])
                        for i in range(0, len(reply), 3)
                    }
                    found.pop(("known", 1), None)  # the old script counts it; the caller drops it
                    assert found == {("lost", 1): 1}, found
            sadd_us, loop_us = await client.eval(
                SADD_COST, 1, f"{store.prefix}:defs", store.prefix, 100_000
            )
        finally:
            await store.purge()
    load_end = os.getloadavg()
    sadd = (sadd_us - loop_us) / 100_000
    print(f"{'script':<8}{'sagas':>8}{'round trip ms (per round)':>40}{'median':>10}")
    for side in ("old", "new"):
        rounds = " ".join(f"{x:.2f}" for x in ms[side])
        print(f"{side:<8}{args.n + 1:>8}{rounds:>40}{statistics.median(ms[side]):>10.2f}")
    print(f"one SADD of a member already there: {sadd:.3f} us of Redis time (100,000 in a script)")
    print(f"load average {load_start[0]:.1f} -> {load_end[0]:.1f}")
    result = {
        "sagas": args.n + 1,
        "old_ms": [round(x, 3) for x in ms["old"]],
        "new_ms": [round(x, 3) for x in ms["new"]],
        "sadd_us": round(sadd, 3),
        "load": [round(load_start[0], 2), round(load_end[0], 2)],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
