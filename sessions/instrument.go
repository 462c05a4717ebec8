package sessions

import (
	"context"
	"errors"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
)

// CommandObserver receives the figures of every Redis command the client
// sends: the command's name from a fixed list (commandNames, "pipeline" for
// a pipeline or transaction sent as one, "other" for any other command), its
// outcome (one of CommandOutcomes) and the time it took, round trip
// included. Implementations must be safe for concurrent use and cheap: it is
// called on the request path.
type CommandObserver interface {
	RedisCommand(command, outcome string, elapsed time.Duration)
}

// The outcomes of a command: ok (a nil reply included), reply_error (Redis
// answered with an error, such as a script's refusal or NOSCRIPT, which
// the client handles), error (no answer: connection, timeout, pool).
const (
	CommandOK         = "ok"
	CommandReplyError = "reply_error"
	CommandError      = "error"
)

// CommandOutcomes lists every outcome.
var CommandOutcomes = []string{CommandOK, CommandReplyError, CommandError}

// CommandNames lists the command labels: the commands the broker sends
// (its own, its scripts' loading, the rate limiter's and go-redis's
// connection set-up), plus "pipeline" and "other".
var CommandNames = []string{
	"get", "set", "del", "exists", "pexpire", "pexpireat", "pttl",
	"hget", "hset", "hgetall", "hmget", "hexists",
	"zadd", "zrem", "zscore", "zcard", "zcount", "zrange", "zrangebyscore",
	"xadd", "xlen", "xrevrange",
	"eval", "evalsha", "eval_ro", "evalsha_ro", "script", "scan", "ping", "info", "hello", "auth", "select", "client", "cluster",
	"pipeline", "other",
}

var commandLabels = func() map[string]string {
	m := make(map[string]string, len(CommandNames))
	for _, n := range CommandNames {
		m[n] = n
	}
	return m
}()

// commandLabel bounds the label of a command to CommandNames.
func commandLabel(name string) string {
	if l, ok := commandLabels[name]; ok {
		return l
	}
	return "other"
}

// Instrument reports every command c sends to o.
func Instrument(c redis.UniversalClient, o CommandObserver) {
	c.AddHook(commandHook{o})
}

// commandHook is the go-redis hook of Instrument.
type commandHook struct{ o CommandObserver }

func (commandHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h commandHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmd)
		h.o.RedisCommand(commandLabel(cmd.Name()), commandOutcome(err), time.Since(start))
		return err
	}
}

func (h commandHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		start := time.Now()
		err := next(ctx, cmds)
		h.o.RedisCommand("pipeline", commandOutcome(err), time.Since(start))
		return err
	}
}

// commandOutcome classifies a command's error.
func commandOutcome(err error) string {
	if err == nil || err == redis.Nil { // the client returns redis.Nil itself, unwrapped
		// Before the targets of errors.As, which escape: the request
		// path allocates nothing here.
		return CommandOK
	}
	return commandFailure(err)
}

// commandFailure classifies an error that is not a nil reply.
func commandFailure(err error) string {
	var re redis.Error
	var ne net.Error
	switch {
	case errors.Is(err, redis.Nil):
		return CommandOK
	case errors.As(err, &ne):
		return CommandError
	case errors.As(err, &re):
		return CommandReplyError
	}
	return CommandError
}
