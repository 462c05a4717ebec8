package sessions

import "github.com/redis/go-redis/v9"

// Lua scripts, each on one key (or keys of one hash tag) so that they run on
// Redis Cluster too. Script.Run sends EVALSHA and falls back to EVAL when the
// server lost its script cache, after a restart or a failover. Field names
// in the scripts are those of the field constants in record.go and end.go.
//
// go-redis sends a command again when its reply was lost, so every script
// that writes must answer a repeat of itself as the first run did: each
// takes a value unique to the call (a token, a sealed blob, an event id) and
// recognises it when it finds it already written.
var (
	// getScript reads a session as HGETALL does, but leaves out the tok
	// field when its SHA-1 is ARGV[1] and the claims field when its SHA-1
	// is ARGV[2]: blobs the reader opened before, whose bytes it still
	// has. It answers {fields, tok left out (1 or 0), claims left out}:
	// the decision travels apart from the values, so that no value stored
	// in the record can pass for it. The reader then opens the bytes it
	// has under the additional data the record's clear fields give now, so
	// that an edit of the record still fails to open. It only reads, and
	// runs as EVALSHA_RO.
	getScript = redis.NewScript(`
local h = redis.call('HGETALL', KEYS[1])
local out, tok, claims = {}, 0, 0
for i = 1, #h, 2 do
  if h[i] == 'tok' and redis.sha1hex(h[i+1]) == ARGV[1] then
    tok = 1
  elseif h[i] == 'claims' and redis.sha1hex(h[i+1]) == ARGV[2] then
    claims = 1
  else
    out[#out+1] = h[i]
    out[#out+1] = h[i+1]
  end
end
return {out, tok, claims}
`)

	// touchScript records a use at ARGV[1] (Unix ms), sealed as ARGV[3],
	// and moves the expiry to ARGV[2] (Unix ms), but only when the use is
	// newer than the one recorded, and never brings back a session that
	// ended. It compares the clear copy of the last use, since Lua cannot
	// open the sealed one; a tampered copy can only hold touches back.
	touchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local last = tonumber(redis.call('HGET', KEYS[1], 'last_used_at'))
if last and last >= tonumber(ARGV[1]) then return 1 end
redis.call('HSET', KEYS[1], 'lu', ARGV[3], 'last_used_at', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`)

	// updateTokensScript is the fenced write of a refresh: it stores the
	// sealed tokens ARGV[4] as generation ARGV[2] of the session KEYS[1]
	// only while the session is at generation ARGV[1] and its lease KEYS[2]
	// still holds the caller's token ARGV[3] (an empty ARGV[3]: a rescue
	// write, fenced by the generation alone). HSET keeps the key's expiry.
	// It answers 1 when written (or when it finds its own write: the
	// generation after and the very same blob), 0 when the session is gone,
	// 2 when the generation moved, 3 when the lease was lost, 4 when the
	// record is no longer at the record version ARGV[5] the tokens were
	// sealed for (a migration converted it). A version 1 record without
	// gen is at generation 1.
	updateTokensScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'v') ~= ARGV[5] then return 4 end
local gen = redis.call('HGET', KEYS[1], 'gen') or '1'
if gen ~= ARGV[1] then
  if gen == ARGV[2] and redis.call('HGET', KEYS[1], 'tok') == ARGV[4] then return 1 end
  return 2
end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[3] then return 3 end
redis.call('HSET', KEYS[1], 'tok', ARGV[4], 'gen', ARGV[2])
return 1
`)

	// acquireScript sets KEYS[1] to the caller's value ARGV[1] for ARGV[2]
	// ms if it is unset. It answers 1 when it set it or finds the caller's
	// own value there (a repeat), 0 when another caller's value is there.
	acquireScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if cur == ARGV[1] then return 1 end
return 0
`)

	// indexAddScript adds a session id (ARGV[2]) with its absolute expiry
	// (ARGV[1], Unix ms) to an index, drops the entries that ended by now
	// (ARGV[3]) and makes the index live as long as its longest-lived entry.
	indexAddScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], string.format('%d', tonumber(last[2])))
return 1
`)

	// indexListScript drops the entries of an index that ended by now
	// (ARGV[1], Unix ms) and returns the others.
	indexListScript = redis.NewScript(`
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
`)

	// extendScript renews a lease (ARGV[2] ms) if its value is still the
	// owner's token (ARGV[1]).
	extendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`)

	// releaseScript deletes a lease if its value is still the owner's token
	// (ARGV[1]).
	releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
`)

	// casScript is a compare-and-set on the fields of one hash (KEYS[1]):
	// ARGV[1] is a count n, ARGV[2..2n+1] the field/value pairs the hash
	// must still hold, the rest the field/value pairs to set. HSET keeps
	// the key's expiry. It answers 1 when set, 0 when the hash is gone, 2
	// when a field no longer holds its expected value.
	casScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = tonumber(ARGV[1])
for i = 2, 2 * n, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return 2 end
end
if #ARGV > 2 * n + 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2 * n + 2))
end
return 1
`)

	// appendAuditScript adds an event (field/value pairs from ARGV[3]) with
	// its id ARGV[2] to the stream KEYS[1], trimmed to about ARGV[1]
	// entries, unless one of the newest entries already has that id: the
	// same call run again adds nothing. Sixteen entries cover every repeat,
	// which follows its first run within a connection's retry.
	appendAuditScript = redis.NewScript(`
local recent = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 16)
for _, entry in ipairs(recent) do
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'event_id' and f[i + 1] == ARGV[2] then return 0 end
  end
end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event_id', ARGV[2], unpack(ARGV, 3))
return 1
`)

	// endScript ends the session KEYS[1]: it deletes it and its lease
	// KEYS[3] and writes its tombstone KEYS[2], holding every field of the
	// record and why it ended, for ARGV[9] ms. ARGV[1] is the call's
	// token, ARGV[2] the generation the session must be at ("0": any),
	// ARGV[3..8] the actor, action, reason, detail, revoke flag and end
	// time. It answers {1, tombstone fields} when it ended the session, or
	// when the session is gone and the tombstone holds this call's token (a
	// repeat); {0} when the session is gone otherwise; {2} when the
	// generation moved.
	endScript = redis.NewScript(`
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then
  if redis.call('HGET', KEYS[2], 'end_token') == ARGV[1] then
    return {1, redis.call('HGETALL', KEYS[2])}
  end
  return {0}
end
if ARGV[2] ~= '0' and redis.call('HGET', KEYS[1], 'gen') ~= ARGV[2] then return {2} end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('HSET', KEYS[2],
  'end_actor', ARGV[3], 'end_action', ARGV[4], 'end_reason', ARGV[5],
  'end_detail', ARGV[6], 'end_revoke', ARGV[7], 'end_at', ARGV[8],
  'end_token', ARGV[1], 'done', '0', 'claim_until', '0')
redis.call('PEXPIRE', KEYS[2], ARGV[9])
return {1, redis.call('HGETALL', KEYS[2])}
`)

	// completeEndScript marks the tombstone KEYS[1] done and forgets the
	// tokens and claims it held. It answers 0 when there is no tombstone.
	completeEndScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'done', '1')
redis.call('HDEL', KEYS[1], 'tok', 'claims')
return 1
`)

	// claimEndScript claims the tombstone KEYS[1] of the session KEYS[2]
	// until ARGV[2] (Unix ms) if its work is not done, it ended by ARGV[3]
	// and nobody claimed it past now (ARGV[1]). It answers {2, tombstone fields} when claimed;
	// {1} to skip it for now; {0} when the outbox entry can go: the end is
	// done, or there is neither tombstone nor session (an end that found
	// nothing, or whose tombstone expired); {3} for a session still there
	// without a tombstone: an end between its outbox entry and its script,
	// or a conditional end its condition refused, whose entry the caller
	// drops once it is older than any end takes.
	claimEndScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then
  if redis.call('EXISTS', KEYS[2]) == 1 then return {3} end
  return {0}
end
local e = redis.call('HMGET', KEYS[1], 'done', 'claim_until', 'end_at')
if e[1] == '1' then return {0} end
if (tonumber(e[2]) or 0) > tonumber(ARGV[1]) then return {1} end
if (tonumber(e[3]) or 0) > tonumber(ARGV[3]) then return {1} end
redis.call('HSET', KEYS[1], 'claim_until', ARGV[2])
return {2, redis.call('HGETALL', KEYS[1])}
`)
)
