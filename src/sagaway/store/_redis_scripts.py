"""The Redis saga log's Lua scripts: one script per transition, so each is atomic and costs one
EVALSHA (one round trip).

Redis runs a script to completion before any other command, so a script's reads and writes are
one isolated, all-or-nothing step (a script stops at its first error, which is why every check
comes before the first write). That is what the lease fence in ``commit`` and the exclusive
hand-out in ``claim`` rely on; no WATCH/MULTI retry loops are needed.

Data layout (``P`` is the store's key prefix, ``id`` a saga id, ``S`` a saga status, ``N`` a
definition name, ``V`` its version)::

    P:saga:id        hash: id name version status input created updated [key owner lease
                     deadline error cancel waiting parked rev]   (absent field = None; cancel
                     is "1" when set; waiting/parked: what a parked saga waits for, until
                     when; rev counts the writes of the hash, absent = 0: Change.take's fence)
    P:steps:id       hash: "step|phase" -> JSON [status, attempts, output, error, uncertain,
                     started_at, finished_at]
    P:events:id      list: JSON [at, type, step, phase, attempt, detail], in commit order
    P:keys           hash: idempotency key -> saga id
    P:all            zset: every saga, score created_at (listing newest first: ZREVRANGE)
    P:ids            zset: every saga, score 0 (ids in byte order: find_ids by ZRANGEBYLEX)
    P:meta           hash: "ids" -> "1" once P:ids holds every saga, "defs" -> "1" once
                     P:defs holds every definition in a claim index (both built at open for a
                     log written before they existed)
    P:status:S       zset: sagas in status S, score created_at (listing, counts: ZCARD)
    P:name:N         zset: sagas of definition N, score created_at
    P:sn:S:N         zset: sagas of N in status S, score created_at (both filters)
    P:free:V:N       zset: active sagas of (N, V) with no lease, score created_at (claim these)
    P:leased:V:N     zset: active leased sagas of (N, V), score lease expiry (claim the expired)
    P:parked:V:N     zset: active parked sagas of (N, V) with no lease, score parked_until
                     (claim those due: the O(log n) counterpart of free for parked sagas)
    P:waiting        zset: every parked saga, score parked_until (list_waiting)
    P:outbox         zset: outbox message ids, score created_at (pending, oldest first)
    P:outbox:msgs    hash: message id -> JSON [id, saga_id, topic, body, headers, created_at]
    P:owner:O        set: active sagas leased to owner O (renew_leases)
    P:defs           set: "V:N" of every definition with a saga ever in a claim index
                     (enqueue adds it; never removed): what the stranded count walks
    (P:saga:id also holds "pinned" = "1" for a saga a user pinned: retention keeps it.)
    P:work           pub/sub channel: "there is work" (a saga queued PENDING, a lease handed back)

Ties in a zset are ordered by member, so ``ZREVRANGE`` lists newest first by (created_at, id), as
the port requires. Scripts never do arithmetic on times: every time and score comes from Python
as ``repr(float)``, which Redis parses exactly (Lua's own number formatting would round).

Optional string arguments are encoded as ``""`` for None and ``"=" + value`` otherwise.

The scripts build key names from the prefix instead of receiving them as KEYS: they run on a
standalone Redis (or a Sentinel-managed primary), not on Redis Cluster.
"""

from __future__ import annotations

SCRIPTS = (
    "CREATE",
    "COMMIT",
    "CLAIM",
    "ACQUIRE",
    "RENEW",
    "REQUEST_CANCEL",
    "LOAD",
    "LIST",
    "WAITING",
    "OUTBOX_PENDING",
    "OUTBOX_DELETE",
    "FIND_IDS",
    "STRANDED",
    "PRUNABLE",
    "PRUNE",
    "PIN",
)

# Shared helpers, prepended to every script (Redis scripts cannot call one another).
_LIB = """
local P = ARGV[1]
local ACTIVE = {PENDING = true, RUNNING = true, COMPENSATING = true}

local function opt(s)
  if s == '' then return false end
  return string.sub(s, 2)
end

local function def(ver, name) return ver .. ':' .. name end

-- Take an active saga out of the claim indexes (before its status/owner/lease/park change);
-- the mirror image of enqueue, so it touches only the keys the saga is in.
local function unqueue(id, status, name, ver, owner, lease, parked)
  if ACTIVE[status] then
    if owner and lease then
      redis.call('ZREM', P .. ':leased:' .. def(ver, name), id)
    elseif parked then
      redis.call('ZREM', P .. ':parked:' .. def(ver, name), id)
    else
      redis.call('ZREM', P .. ':free:' .. def(ver, name), id)
    end
    if owner then redis.call('SREM', P .. ':owner:' .. owner, id) end
  end
end

-- Put a saga into the claim indexes its new status/owner/lease/park call for (and its
-- definition into P:defs: the stranded count walks definitions, not sagas).
local function enqueue(id, status, name, ver, created, owner, lease, parked)
  if ACTIVE[status] then
    redis.call('SADD', P .. ':defs', def(ver, name))
    if owner and lease then
      redis.call('ZADD', P .. ':leased:' .. def(ver, name), lease, id)
    elseif parked then
      redis.call('ZADD', P .. ':parked:' .. def(ver, name), parked, id)
    else
      redis.call('ZADD', P .. ':free:' .. def(ver, name), created, id)
    end
    if owner then redis.call('SADD', P .. ':owner:' .. owner, id) end
  end
end

local function loaded(id)
  return {redis.call('HGETALL', P .. ':saga:' .. id), redis.call('HGETALL', P .. ':steps:' .. id)}
end

-- ARGV[i] is a count n, followed by n items; HSET them as field/value pairs into key.
-- Returns the index after the items.
local function hset_block(key, i)
  local n = tonumber(ARGV[i])
  if n > 0 then redis.call('HSET', key, unpack(ARGV, i + 1, i + n)) end
  return i + n + 1
end

local function push_rest(id, i)
  if i <= #ARGV then redis.call('RPUSH', P .. ':events:' .. id, unpack(ARGV, i, #ARGV)) end
end
"""

# ARGV: P, id, key(opt), name, version, status, created, owner(opt), lease ("" if None),
#       n, saga hash items..., n, step hash items..., events...
# Returns {1, id} created, {0, existing_id} for a used idempotency key, {-1, id} duplicate id.
CREATE = (
    _LIB
    + """
local id, name, ver, status, created = ARGV[2], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local key = opt(ARGV[3])
if key then
  local existing = redis.call('HGET', P .. ':keys', key)
  if existing then return {0, existing} end
end
local h = P .. ':saga:' .. id
if redis.call('EXISTS', h) == 1 then return {-1, id} end
if key then redis.call('HSET', P .. ':keys', key, id) end
local i = hset_block(h, 10)
i = hset_block(P .. ':steps:' .. id, i)
push_rest(id, i)
redis.call('ZADD', P .. ':all', created, id)
redis.call('ZADD', P .. ':ids', 0, id)
redis.call('ZADD', P .. ':status:' .. status, created, id)
redis.call('ZADD', P .. ':name:' .. name, created, id)
redis.call('ZADD', P .. ':sn:' .. status .. ':' .. name, created, id)
local owner = opt(ARGV[8])
enqueue(id, status, name, ver, created, owner, ARGV[9] ~= '' and ARGV[9])
if status == 'PENDING' and not owner then redis.call('PUBLISH', P .. ':work', id) end
return {1, id}
"""
)

# ARGV: P, id, fence owner(opt), at, status(opt), error(opt), release 0/1, clear 0/1,
#       unless_cancelled 0/1, park ("" neither, "-" unpark, "=" + waiting_for), parked_until,
#       take's rev ("" no take), take's lease expiry,
#       n, outbox items (id, score, JSON)..., n, step hash items..., events...
# With a take, the owner is not checked: the hash's rev must be the one read and no other
# owner hold a live lease at ``at``; the owner then gets the lease (Change.take).
# Returns 0 applied, -1 no such saga, -2 lease lost, -4 a cancel is pending and the change
# had unless_cancelled, -5 the take's row was written since it was read (nothing written in
# those cases, outbox messages included).
COMMIT = (
    _LIB
    + """
local id = ARGV[2]
local h = P .. ':saga:' .. id
local cur = redis.call('HMGET', h, 'status', 'owner', 'name', 'version', 'created', 'lease',
  'cancel', 'parked', 'rev')
if not cur[1] then return -1 end
local fence = opt(ARGV[3])
local take = ARGV[12] ~= ''
if take then
  local live = cur[2] and cur[2] ~= fence and cur[6] and tonumber(cur[6]) >= tonumber(ARGV[4])
  if (cur[9] or '0') ~= ARGV[12] or live then return -5 end
elseif fence and cur[2] ~= fence then return -2 end
if ARGV[9] == '1' and cur[7] then return -4 end
local old, owner, name, ver, created = cur[1], cur[2], cur[3], cur[4], cur[5]
local lease = cur[6]
local new = opt(ARGV[5]) or old
local park = ARGV[10]
local parking = park ~= '' and park ~= '-'
local parked = cur[8]
if parking then parked = ARGV[11] elseif park == '-' then parked = false end
-- Parking hands the lease back too, but wakes no worker: the saga is not claimable yet.
local release = ARGV[7] == '1' or parking
local moved = new ~= old or release or park ~= '' or take
if moved then unqueue(id, old, name, ver, owner, cur[6], cur[8]) end
if take then
  owner, lease = fence, ARGV[13]
  redis.call('HSET', h, 'owner', owner, 'lease', lease)
end
redis.call('HINCRBY', h, 'rev', 1)
if new ~= old then
  redis.call('ZREM', P .. ':status:' .. old, id)
  redis.call('ZREM', P .. ':sn:' .. old .. ':' .. name, id)
  redis.call('ZADD', P .. ':status:' .. new, created, id)
  redis.call('ZADD', P .. ':sn:' .. new .. ':' .. name, created, id)
end
if ARGV[5] ~= '' then
  redis.call('HSET', h, 'status', new, 'updated', ARGV[4])
  local err = opt(ARGV[6])
  if err then redis.call('HSET', h, 'error', err) else redis.call('HDEL', h, 'error') end
else
  redis.call('HSET', h, 'updated', ARGV[4])
end
if release then redis.call('HDEL', h, 'owner', 'lease') end
if ARGV[8] == '1' then redis.call('HDEL', h, 'cancel') end
if parking then
  redis.call('HSET', h, 'waiting', string.sub(park, 2), 'parked', parked)
  redis.call('ZADD', P .. ':waiting', parked, id)
elseif park == '-' then
  redis.call('HDEL', h, 'waiting', 'parked')
  redis.call('ZREM', P .. ':waiting', id)
end
if moved then
  if release then
    enqueue(id, new, name, ver, created, false, false, parked)
  else
    enqueue(id, new, name, ver, created, owner, lease, parked)
  end
end
local i = 14
local n = tonumber(ARGV[i])
for j = i + 1, i + n, 3 do
  redis.call('ZADD', P .. ':outbox', ARGV[j + 1], ARGV[j])
  redis.call('HSET', P .. ':outbox:msgs', ARGV[j], ARGV[j + 2])
end
push_rest(id, hset_block(P .. ':steps:' .. id, i + n + 1))
if ARGV[7] == '1' and not parking and ACTIVE[new] then
  redis.call('PUBLISH', P .. ':work', id)
end
return 0
"""
)

# ARGV: P, owner, now, expires, limit, include_own 0/1, SAGA_CLAIMED event, (name, version)...
# Returns a list of {saga hash, steps hash} for the sagas now leased to owner.
CLAIM = (
    _LIB
    + """
local me, now, expires, limit = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids, seen = {}, {}
local function take(id)
  if #ids < limit and not seen[id] then
    seen[id] = true
    ids[#ids + 1] = id
  end
end
if ARGV[6] == '1' then
  local wanted = {}
  for i = 8, #ARGV, 2 do wanted[def(ARGV[i + 1], ARGV[i])] = true end
  for _, id in ipairs(redis.call('SMEMBERS', P .. ':owner:' .. me)) do
    local f = redis.call('HMGET', P .. ':saga:' .. id, 'name', 'version')
    if f[1] and wanted[def(f[2], f[1])] then take(id) end
  end
end
for i = 8, #ARGV, 2 do
  local d = def(ARGV[i + 1], ARGV[i])
  if #ids < limit then
    for _, id in ipairs(redis.call('ZRANGE', P .. ':free:' .. d, 0, limit - #ids - 1)) do
      take(id)
    end
  end
  if #ids < limit then
    local expired = redis.call(
      'ZRANGEBYSCORE', P .. ':leased:' .. d, '-inf', '(' .. now, 'LIMIT', 0, limit - #ids)
    for _, id in ipairs(expired) do take(id) end
  end
  if #ids < limit then  -- parked sagas whose parked_until has come (<= now)
    local due = redis.call(
      'ZRANGEBYSCORE', P .. ':parked:' .. d, '-inf', now, 'LIMIT', 0, limit - #ids)
    for _, id in ipairs(due) do take(id) end
  end
end
local out = {}
for _, id in ipairs(ids) do
  local h = P .. ':saga:' .. id
  local f = redis.call('HMGET', h, 'status', 'owner', 'name', 'version', 'created', 'lease',
    'parked')
  unqueue(id, f[1], f[3], f[4], f[2], f[6], f[7])
  redis.call('HSET', h, 'owner', me, 'lease', expires, 'updated', now)
  redis.call('HINCRBY', h, 'rev', 1)
  enqueue(id, f[1], f[3], f[4], f[5], me, expires, f[7])
  redis.call('RPUSH', P .. ':events:' .. id, ARGV[7])
  out[#out + 1] = loaded(id)
end
return out
"""
)

# ARGV: P, id, owner, now, expires, event(opt), statuses...
# Returns {-1} no such saga, {0} not taken, {1, {saga hash, steps hash}} taken.
ACQUIRE = (
    _LIB
    + """
local id, me, now, expires = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local h = P .. ':saga:' .. id
local f = redis.call('HMGET', h, 'status', 'owner', 'lease', 'name', 'version', 'created',
  'parked')
if not f[1] then return {-1} end
local allowed = false
for i = 7, #ARGV do if ARGV[i] == f[1] then allowed = true end end
local live = f[2] and f[2] ~= me and f[3] and tonumber(f[3]) >= tonumber(now)
if not allowed or live then return {0} end
unqueue(id, f[1], f[4], f[5], f[2], f[3], f[7])
redis.call('HSET', h, 'owner', me, 'lease', expires, 'updated', now)
redis.call('HINCRBY', h, 'rev', 1)
enqueue(id, f[1], f[4], f[5], f[6], me, expires, f[7])
local event = opt(ARGV[6])
if event then redis.call('RPUSH', P .. ':events:' .. id, event) end
return {1, loaded(id)}
"""
)

# ARGV: P, owner, expires. Returns the ids (among the renewed) whose cancel was requested.
RENEW = (
    _LIB
    + """
local me, expires = ARGV[2], ARGV[3]
local cancelled = {}
local mine = P .. ':owner:' .. me
for _, id in ipairs(redis.call('SMEMBERS', mine)) do
  local h = P .. ':saga:' .. id
  local f = redis.call('HMGET', h, 'status', 'owner', 'name', 'version', 'cancel', 'lease')
  if f[1] and ACTIVE[f[1]] and f[2] == me then
    redis.call('HSET', h, 'lease', expires)
    if not f[6] then  -- from free to leased: it enters a claim index (see enqueue)
      redis.call('ZREM', P .. ':free:' .. def(f[4], f[3]), id)
      redis.call('SADD', P .. ':defs', def(f[4], f[3]))
    end
    redis.call('ZADD', P .. ':leased:' .. def(f[4], f[3]), expires, id)
    if f[5] then cancelled[#cancelled + 1] = id end
  else
    redis.call('SREM', mine, id)
  end
end
return cancelled
"""
)

# ARGV: P, id, at, expected status, expected cancel flag ("1" or ""), expected number of step
# rows, what to do ("flag": set the flag and push the event, "push": push the event, "none"),
# event. The decision is taken in Python (state.cancel_refusal) from a snapshot: applied only if
# the facts it used are unchanged (step rows are never deleted, so their count tells).
# Returns {-1} no such saga, {-2} the facts changed (decide again), or
# {1, saga hash, steps hash, events}.
REQUEST_CANCEL = (
    _LIB
    + """
local id = ARGV[2]
local h = P .. ':saga:' .. id
local cur = redis.call('HMGET', h, 'status', 'cancel')
if not cur[1] then return {-1} end
local flagged = cur[2] or ''
local rows = redis.call('HLEN', P .. ':steps:' .. id)
if cur[1] ~= ARGV[4] or flagged ~= ARGV[5] or rows ~= tonumber(ARGV[6]) then return {-2} end
if ARGV[7] == 'flag' then
  redis.call('HSET', h, 'cancel', '1', 'updated', ARGV[3])
  redis.call('HINCRBY', h, 'rev', 1)
end
if ARGV[7] ~= 'none' then redis.call('RPUSH', P .. ':events:' .. id, ARGV[8]) end
local r = loaded(id)
return {1, r[1], r[2], redis.call('LRANGE', P .. ':events:' .. id, 0, -1)}
"""
)

# ARGV: P, id, history 0/1. Returns {} or {saga hash, steps hash, events} from one snapshot.
LOAD = (
    _LIB
    + """
local id = ARGV[2]
local saga = redis.call('HGETALL', P .. ':saga:' .. id)
if #saga == 0 then return {} end
local events = {}
if ARGV[3] == '1' then events = redis.call('LRANGE', P .. ':events:' .. id, 0, -1) end
return {saga, redis.call('HGETALL', P .. ':steps:' .. id), events}
"""
)

# ARGV: P, index key suffix, offset, limit (> 0). Returns {total, saga hash...} newest first.
LIST = (
    _LIB
    + """
local key = P .. ':' .. ARGV[2]
local first = tonumber(ARGV[3])
local out = {redis.call('ZCARD', key)}
for _, id in ipairs(redis.call('ZREVRANGE', key, first, first + tonumber(ARGV[4]) - 1)) do
  out[#out + 1] = redis.call('HGETALL', P .. ':saga:' .. id)
end
return out
"""
)

# ARGV: P, prefix, offset, limit (> 0). Returns {total, saga hash...}, soonest parked_until
# first (then id: zset ties order by member). A prefix is matched by a scan of the parked
# sagas: list_waiting is a dashboard's query, not the hot path.
WAITING = (
    _LIB
    + """
local key = P .. ':waiting'
local prefix, first, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if prefix == '' then
  local out = {redis.call('ZCARD', key)}
  for _, id in ipairs(redis.call('ZRANGE', key, first, first + limit - 1)) do
    out[#out + 1] = redis.call('HGETALL', P .. ':saga:' .. id)
  end
  return out
end
local out, total = {0}, 0
for _, id in ipairs(redis.call('ZRANGE', key, 0, -1)) do
  local w = redis.call('HGET', P .. ':saga:' .. id, 'waiting')
  if w and string.sub(w, 1, #prefix) == prefix then
    total = total + 1
    if total > first and total <= first + limit then
      out[#out + 1] = redis.call('HGETALL', P .. ':saga:' .. id)
    end
  end
end
out[1] = total
return out
"""
)

# ARGV: P, max score ("+inf" or "(" + older_than), limit (> 0). Returns the messages' JSON,
# oldest first (created_at, then id), from one snapshot.
OUTBOX_PENDING = (
    _LIB
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. ':outbox', '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = redis.call('HGET', P .. ':outbox:msgs', id)
end
return out
"""
)

# ARGV: P, ids... Returns how many were deleted.
OUTBOX_DELETE = (
    _LIB
    + """
local n = 0
for i = 2, #ARGV do
  n = n + redis.call('ZREM', P .. ':outbox', ARGV[i])
  redis.call('HDEL', P .. ':outbox:msgs', ARGV[i])
end
return n
"""
)

# ARGV: P, prefix, limit (> 0). The ids starting with prefix, in byte order: every such id
# sorts from the prefix (inclusive) to the prefix followed by byte 255 (exclusive), a byte
# UTF-8 never contains.
FIND_IDS = (
    _LIB
    + """
local prefix = ARGV[2]
return redis.call('ZRANGEBYLEX', P .. ':ids', '[' .. prefix, '(' .. prefix .. '\\255',
  'LIMIT', 0, tonumber(ARGV[3]))
"""
)

# ARGV: P, now, owner, (name, version) the caller knows... Returns name, version, count... of
# the active sagas no engine drives (no owner, no lease or an expired one, or ``owner``'s: its
# past life) per other definition. Each active saga is in one claim index of its definition:
# free and parked (no lease: all undriven) or leased (scored by expiry). So no saga is read:
# per unknown definition two ZCARDs, a ZCOUNT, and owner's live leases (walking the smaller
# of its lease set and the definition's live leases).
STRANDED = (
    _LIB
    + """
local now, me = ARGV[2], ARGV[3]
local known = {}
for i = 4, #ARGV, 2 do known[def(ARGV[i + 1], ARGV[i])] = true end
local mine = P .. ':owner:' .. me
local out = {}
for _, d in ipairs(redis.call('SMEMBERS', P .. ':defs')) do
  if not known[d] then
    local leased = P .. ':leased:' .. d
    local n = redis.call('ZCARD', P .. ':free:' .. d) + redis.call('ZCARD', P .. ':parked:' .. d)
      + redis.call('ZCOUNT', leased, '-inf', '(' .. now)
    if redis.call('ZCOUNT', leased, now, '+inf') <= redis.call('SCARD', mine) then
      for _, id in ipairs(redis.call('ZRANGEBYSCORE', leased, now, '+inf')) do
        n = n + redis.call('SISMEMBER', mine, id)
      end
    else
      for _, id in ipairs(redis.call('SMEMBERS', mine)) do
        local lease = redis.call('ZSCORE', leased, id)
        if lease and tonumber(lease) >= tonumber(now) then n = n + 1 end
      end
    end
    if n > 0 then
      local ver, name = string.match(d, '^([^:]*):(.*)$')
      for _, x in ipairs({name, ver, n}) do out[#out + 1] = x end
    end
  end
end
return out
"""
)

# Retention. Prunable sagas are found through P:status:S of the prunable statuses (score
# created_at): a saga that finished before the cutoff was created before it, so the scan reads
# finished sagas oldest-created first and passes over only those pinned or written since the
# cutoff, at most PRUNE_SCAN of them per call. No index of its own: that would cost every
# commit (the hot path) a write to keep it.
PRUNE_SCAN = 20_000
_PRUNABLE_LUA = "{SUCCEEDED = true, COMPENSATED = true}"

# ARGV: P, cutoff, limit (> 0). Returns up to limit prunable ids, oldest write first.
PRUNABLE = (
    _LIB
    + f"""
local cutoff, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local found = {{}}
for status in pairs({_PRUNABLE_LUA}) do
  local key, first, taken = P .. ':status:' .. status, 0, 0
  while taken < limit and first < {PRUNE_SCAN} do
    local ids = redis.call('ZRANGEBYSCORE', key, '-inf', '(' .. ARGV[2], 'LIMIT', first, 500)
    for _, id in ipairs(ids) do
      local f = redis.call('HMGET', P .. ':saga:' .. id, 'updated', 'pinned')
      if not f[2] and tonumber(f[1]) < cutoff and taken < limit then
        found[#found + 1] = {{tonumber(f[1]), id}}
        taken = taken + 1
      end
    end
    if #ids < 500 then break end
    first = first + #ids
  end
end
table.sort(found, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end)
local out = {{}}
for i = 1, math.min(limit, #found) do out[i] = found[i][2] end
return out
"""
)

# ARGV: P, cutoff, ids... Deletes those still prunable with every key and index entry they
# have; returns their ids. Outbox messages name their saga only in their JSON: the (small)
# outbox hash is read once per call when something was pruned.
PRUNE = (
    _LIB
    + f"""
local cutoff, PRUNABLE = tonumber(ARGV[2]), {_PRUNABLE_LUA}
local gone, gone_set = {{}}, {{}}
for i = 3, #ARGV do
  local id = ARGV[i]
  local h = P .. ':saga:' .. id
  local f = redis.call('HMGET', h, 'status', 'pinned', 'updated', 'name', 'key')
  if f[1] and PRUNABLE[f[1]] and not f[2] and tonumber(f[3]) < cutoff and not gone_set[id] then
    local status, name, key = f[1], f[4], f[5]
    redis.call('DEL', h, P .. ':steps:' .. id, P .. ':events:' .. id)
    if key and redis.call('HGET', P .. ':keys', key) == id then
      redis.call('HDEL', P .. ':keys', key)
    end
    redis.call('ZREM', P .. ':all', id)
    redis.call('ZREM', P .. ':ids', id)
    redis.call('ZREM', P .. ':status:' .. status, id)
    redis.call('ZREM', P .. ':name:' .. name, id)
    redis.call('ZREM', P .. ':sn:' .. status .. ':' .. name, id)
    redis.call('ZREM', P .. ':waiting', id)
    gone[#gone + 1] = id
    gone_set[id] = true
  end
end
if #gone > 0 and redis.call('HLEN', P .. ':outbox:msgs') > 0 then
  local msgs = redis.call('HGETALL', P .. ':outbox:msgs')
  for j = 1, #msgs, 2 do
    if gone_set[cjson.decode(msgs[j + 1])[2]] then
      redis.call('HDEL', P .. ':outbox:msgs', msgs[j])
      redis.call('ZREM', P .. ':outbox', msgs[j])
    end
  end
end
return gone
"""
)

# ARGV: P, id, "1" pin / "0" unpin. Returns {} for an unknown saga, else {saga hash, steps}.
PIN = (
    _LIB
    + """
local h = P .. ':saga:' .. ARGV[2]
if redis.call('EXISTS', h) == 0 then return {} end
if ARGV[3] == '1' then redis.call('HSET', h, 'pinned', '1') else redis.call('HDEL', h, 'pinned') end
return loaded(ARGV[2])
"""
)
