"""The Redis store's Lua scripts: each a check and its writes, atomic on the server.

Clocks: leases are judged by the server's ``TIME``, never a replica's, so replicas' clocks may disagree.
"""

from __future__ import annotations

import redis.asyncio as redis

# Each keeps the rules of base.py (may_start, may_append, may_finish) in one atomic step.

# A queued task is leased too: if its replica dies before starting it, the reaper still ends it.
CREATE = """
if redis.call('HSETNX', KEYS[1], 'task_id', ARGV[1]) == 0 then return redis.call('HGETALL', KEYS[1]) end
redis.call('HSET', KEYS[1], 'status', 'queued', 'created_at', ARGV[4], 'updated_at', ARGV[4],
           'model', ARGV[3], 'fingerprint', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
if tonumber(ARGV[6]) >= 0 then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[6]), ARGV[1])
end
return 1
"""

# Appends only while the task runs on this owner: nothing may follow a terminal event. ARGV[2], when set, is
# how many events the owner had appended before these: an attempt whose answer was lost (a timeout, a dropped
# connection) may have been written, so its retry skips what is there and returns the ids it got.
APPEND = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' or redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then
  return false
end
local n, done = #ARGV - 2, 0
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
for i = 3 + done, #ARGV do ids[#ids + 1] = redis.call('XADD', KEYS[2], '*', 'e', ARGV[i]) end
return ids
"""

# Starting again on the same owner (a retry whose first answer was lost) answers the id of the first event.
START = """
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[2] then
  return redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1][1]
end
if status ~= 'queued' then return false end
redis.call('HSET', KEYS[1], 'status', 'running', 'owner', ARGV[2], 'updated_at', ARGV[4])
if tonumber(ARGV[3]) >= 0 then redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1]) end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return id
"""

# ARGV[8]: when set, finish only if the lease lapsed (the reaper's call), judged by the server's clock.
FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then redis.call('ZREM', KEYS[3], ARGV[7]) return false end
if status ~= 'queued' and status ~= 'running' then return false end
if ARGV[8] ~= '' then
  local t = redis.call('TIME')
  local deadline = redis.call('ZSCORE', KEYS[3], ARGV[7])
  if deadline and tonumber(deadline) > t[1] * 1000 + math.floor(t[2] / 1000) then return false end
end
local id = redis.call('XADD', KEYS[2], '*', 'e', ARGV[1])
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'updated_at', ARGV[5], 'result', ARGV[3], 'error', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[7])
return id
"""

# KEYS[1] the lease zset, KEYS[i+1] the hash of task ARGV[i+1]; returns the ids whose cancel was requested.
RENEW = """
local t = redis.call('TIME')
local deadline = t[1] * 1000 + math.floor(t[2] / 1000) + tonumber(ARGV[1])
local cancelled = {}
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', deadline, ARGV[i])
  if redis.call('HGET', KEYS[i], 'cancel') == '1' then cancelled[#cancelled + 1] = ARGV[i] end
end
return cancelled
"""

# ARGV[2]: the channel. Not in KEYS: a channel is no key, and would put the script across two cluster slots.
REQUEST_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'cancel', '1') end
return redis.call('PUBLISH', ARGV[2], ARGV[1])
"""

LAPSED = """
local t = redis.call('TIME')
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', t[1] * 1000 + math.floor(t[2] / 1000), 'LIMIT', 0, 100)
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

    def __init__(self, client: redis.Redis) -> None:
        self.create = client.register_script(CREATE)
        self.start = client.register_script(START)
        self.append = client.register_script(APPEND)
        self.finish = client.register_script(FINISH)
        self.renew = client.register_script(RENEW)
        self.lapsed = client.register_script(LAPSED)
        self.request_cancel = client.register_script(REQUEST_CANCEL)
        self.refresh_if = client.register_script(REFRESH_IF)
        self.delete_if = client.register_script(DELETE_IF)
        self.count_in_window = client.register_script(COUNT_IN_WINDOW)
        self.claim_slot = client.register_script(CLAIM_SLOT)
