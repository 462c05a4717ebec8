package sessions

import "github.com/redis/go-redis/v9"

// Lua scripts, each on one key (or keys of one hash tag) so that they run on
// Redis Cluster too. Script.Run sends EVALSHA and falls back to EVAL when the
// server lost its script cache, after a restart or a failover. Field names
// in the scripts are those of the field constants in store.go.
var (
	// touchScript records a use (ARGV[1], Unix ms) and moves the expiry
	// (ARGV[2], Unix ms), but never brings back a session that ended.
	touchScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], ARGV[2])
return 1
`)

	// updateTokensScript replaces the sealed tokens (ARGV[1]) of a session
	// that still exists.
	updateTokensScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'tok', ARGV[1])
return 1
`)

	// deleteScript returns the session's fields and deletes it, or returns
	// nil when there is nothing to delete.
	deleteScript = redis.NewScript(`
local fields = redis.call('HGETALL', KEYS[1])
if #fields == 0 then return false end
redis.call('DEL', KEYS[1])
return fields
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
)
