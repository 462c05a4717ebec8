package sessions

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/redis/go-redis/v9"
)

func TestCommandOutcome(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"ok", nil, CommandOK},
		{"nil reply", redis.Nil, CommandOK},
		{"closed client", redis.ErrClosed, CommandError},
		{"timeout", &net.OpError{Op: "read", Err: context.DeadlineExceeded}, CommandError},
		{"pool", redis.ErrPoolTimeout, CommandError},
		{"script refusal", replyError("ERR lease lost"), CommandReplyError},
		{"wrapped", errors.Join(errors.New("x"), replyError("NOSCRIPT")), CommandReplyError},
	}
	for _, tt := range tests {
		if got := commandOutcome(tt.err); got != tt.want {
			t.Errorf("%s: commandOutcome(%v) = %q, want %q", tt.name, tt.err, got, tt.want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { commandOutcome(nil) }); n != 0 {
		t.Errorf("commandOutcome(nil) allocates %v times, want 0", n)
	}
}

// replyError is an error Redis answered, as the client reports it.
type replyError string

func (e replyError) Error() string { return string(e) }
func (replyError) RedisError()     {}

func TestCommandLabel(t *testing.T) {
	for name, want := range map[string]string{"hgetall": "hgetall", "evalsha": "evalsha", "flushall": "other", "": "other"} {
		if got := commandLabel(name); got != want {
			t.Errorf("commandLabel(%q) = %q, want %q", name, got, want)
		}
	}
}
