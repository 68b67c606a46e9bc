"""The Redis store's Lua scripts: each a check and its writes, atomic on the server.

Clocks: leases are judged by the server's ``TIME``, never a replica's, so replicas' clocks may disagree.
"""

from __future__ import annotations

import redis.asyncio as redis
from redis.asyncio.cluster import RedisCluster

# Each keeps the rules of base.py (may_start, may_append, may_finish) in one atomic step, on the keys of one task.
#
# Leases: a task's own hash holds its lease deadline (field ``lease``, server ms), which the reaper checks as it
# ends the task. A lease index (a zset of task id -> deadline, keys.RedisKeys.leases) is only how the reaper
# finds candidates. With one Redis the scripts keep the index too, given as their last key; on a Redis Cluster
# it lives in another slot, and the store keeps it with commands of its own (store/redis_cluster.py).
#
# Channels: on a Redis Cluster, the scripts that write events publish them on the task's own sharded channel
# (``channel``, tagged as the task's keys; '' with one Redis, whose live reads are XREADs), as lines of
# ``<id> <event JSON>`` (JSON has no raw newline).

# A queued task is leased too: if its replica dies before starting it, the reaper still ends it. With an owner
# (ARGV[7]) the task is created started, as START would start it: running on the owner, its first event (ARGV[8])
# appended; it answers that event's id, else 1. Nothing is published: nobody can follow a task before it exists
# (a follower of an unknown task ends at once). A task that exists answers its hash, unchanged, unless this very
# call created it (ARGV[9], a token per call): a retry whose first answer was lost answers as the first did.
# KEYS task hash, events, [lease index]; ARGV id, fingerprint, model, at, ttl, lease ms (-1: none), owner ('': none),
# event, attempt
CREATE = """
if redis.call('HSETNX', KEYS[1], 'task_id', ARGV[1]) == 0 then
  if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[9] then return redis.call('HGETALL', KEYS[1]) end
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if ARGV[7] ~= '' and first then return first[1] end
  return 1
end
redis.call('HSET', KEYS[1], 'status', ARGV[7] == '' and 'queued' or 'running', 'created_at', ARGV[4],
           'updated_at', ARGV[4], 'model', ARGV[3], 'fingerprint', ARGV[2], 'attempt', ARGV[9])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if tonumber(ARGV[6]) >= 0 then
  local t = redis.call('TIME')
  local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[6])
  redis.call('HSET', KEYS[1], 'lease', deadline)
  if KEYS[3] then redis.call('ZADD', KEYS[3], deadline, ARGV[1]) end
end
if ARGV[7] == '' then return 1 end
redis.call('HSET', KEYS[1], 'owner', ARGV[7])
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[8])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return id
"""

# Appends only while the task runs on this owner: nothing may follow a terminal event. ARGV[2], when set, is
# how many events the owner had appended before these: an attempt whose answer was lost (a timeout, a dropped
# connection) may have been written, so its retry skips what is there and returns the ids it got.
# KEYS task hash, events; ARGV owner, offset, channel, events...
APPEND = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return false
end
local n, done = #ARGV - 3, 0
if ARGV[2] ~= '' then
  local appended = tonumber(redis.call('HGET', KEYS[1], 'appended') or '0')
  done = math.min(math.max(appended - tonumber(ARGV[2]), 0), n)
  redis.call('HSET', KEYS[1], 'appended', math.max(appended, tonumber(ARGV[2]) + n))
end
local ids = {}
if done > 0 then
  local written = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', done)
  for i = #written, 1, -1 do ids[#ids + 1] = written[i][1] end
end
local lines = {}
for i = 4 + done, #ARGV do
  local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[i])
  ids[#ids + 1] = id
  lines[#lines + 1] = id .. ' ' .. ARGV[i]
end
if ARGV[3] ~= '' and #lines > 0 then redis.call('SPUBLISH', ARGV[3], table.concat(lines, '\\n')) end
return ids
"""

# Starting again on the same owner (a retry whose first answer was lost) answers the id of the first event.
# KEYS task hash, events, [lease index]; ARGV id, owner, lease ms, at, event, ttl, channel
START = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  return redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1][1]
end
if status ~= 'queued' then return false end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[2], 'updated_at', ARGV[4])
if tonumber(ARGV[3]) >= 0 then
  redis.call('HSET', KEYS[1], 'lease', now + tonumber(ARGV[3]))
  if KEYS[3] then redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1]) end
end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[7] ~= '' then redis.call('SPUBLISH', ARGV[7], id .. ' ' .. ARGV[5]) end
return id
"""

# ARGV[8]: when set, finish only if the lease lapsed (the reaper's call), judged by the server's clock; a lease
# still running answers its deadline (a number), for the index. Nothing to end answers false.
# KEYS task hash, events, [lease index]; ARGV event, status, result, error, at, ttl, id, only if lapsed, channel
FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then
  if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[7]) end
  return false
end
if ARGV[8] ~= '' then
  local t = redis.call('TIME')
  local deadline = tonumber(redis.call('HGET', KEYS[1], 'lease') or '-1')
  if deadline < 0 or deadline > t[1] * 1000 + math.floor(t[2] / 1000) then
    if KEYS[3] and deadline >= 0 then redis.call('ZADD', KEYS[3], 'XX', deadline, ARGV[7]) end
    return math.max(deadline, 0)
  end
end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[5], 'result', ARGV[3], 'error', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if KEYS[3] then redis.call('ZREM', KEYS[3], ARGV[7]) end
if ARGV[9] ~= '' then redis.call('SPUBLISH', ARGV[9], id .. ' ' .. ARGV[1]) end
return id
"""

# KEYS the hashes of tasks ARGV[2..] (one Redis: any; a cluster: of one slot); ARGV[1] lease ms. Extends the
# leases of those not ended; returns the ids whose cancel was requested.
RENEW = """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local cancelled = {}
for i = 1, #KEYS do
  local task = redis.call('HMGET', KEYS[i], 'status', 'cancel')
  if task[1] == 'queued' or task[1] == 'running' then redis.call('HSET', KEYS[i], 'lease', deadline) end
  if task[2] == '1' then cancelled[#cancelled + 1] = ARGV[i + 1] end
end
return cancelled
"""

# KEYS[1] a lease index; ARGV lease ms, n, n ids to drop (ended), then ids to move to the new deadline (if there)
RENEW_INDEX = """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local n = tonumber(ARGV[2])
for i = 3, 2 + n do redis.call('ZREM', KEYS[1], ARGV[i]) end
for i = 3 + n, #ARGV do redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i]) end
return 1
"""

# KEYS[1] a lease index; ARGV lease ms, id, 'XX' (only if there) or ''
LEASE = """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
if ARGV[3] == 'XX' then return redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[2]) end
return redis.call('ZADD', KEYS[1], deadline, ARGV[2])
"""

# ARGV[2]: the channel ('': none, on a cluster). Not in KEYS: a channel is no key, and would put the script
# across two cluster slots.
REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'cancel', '1') end
if ARGV[2] == '' then return 0 end
return redis.call('PUBLISH', ARGV[2], ARGV[1])
"""

LAPSED = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000), 'LIMIT', 0, 100)
"""

# A follower's look: a page of the log after ARGV[1] ('-' for all of it) and, when there is none, the task's
# status (nil: gone) — one round trip, and no race between the two reads. KEYS: task hash, events stream.
LOOK = """
local page = redis.call('XRANGE', KEYS[2], ARGV[1], '+', 'COUNT', ARGV[2])
if #page > 0 then return {page, 'running'} end
return {page, redis.call('HGET', KEYS[1], 'status')}
"""

REFRESH_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

DELETE_IF = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

COUNT_IN_WINDOW = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

# KEYS[1] a zset member -> deadline (server ms); ARGV member, limit, ttl ms. Lapsed slots are dropped first.
CLAIM_SLOT = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


class Scripts:
    """The scripts, registered on one client (each runs by EVALSHA, loaded again if the server forgot it)."""

    def __init__(self, client: redis.Redis | RedisCluster) -> None:
        self.create = client.register_script(CREATE)
        self.start = client.register_script(START)
        self.append = client.register_script(APPEND)
        self.finish = client.register_script(FINISH)
        self.renew = client.register_script(RENEW)
        self.renew_index = client.register_script(RENEW_INDEX)
        self.lease = client.register_script(LEASE)
        self.lapsed = client.register_script(LAPSED)
        self.look = client.register_script(LOOK)
        self.request_cancel = client.register_script(REQUEST_CANCEL)
        self.refresh_if = client.register_script(REFRESH_IF)
        self.delete_if = client.register_script(DELETE_IF)
        self.count_in_window = client.register_script(COUNT_IN_WINDOW)
        self.claim_slot = client.register_script(CLAIM_SLOT)
