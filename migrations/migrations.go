// Package migrations versions the broker's Redis key layout. Each Step moves
// a store from the version before it to its own; the version a store is at is
// recorded as an integer at VersionKey. A broker serves a store at the
// version it was built for or the one before (Check), so that `broker
// migrate` (Apply) can bring the store up to it while the brokers serve.
package migrations

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// VersionKey holds the schema version of the store as a decimal integer.
const VersionKey = "broker:schema_version"

// Step is one change of the key layout.
type Step struct {
	// Version is the schema version the store is at once Up succeeded.
	Version int
	Name    string
	// NeedsRecords marks a step that converts sealed session records, which
	// takes Options.Records.
	NeedsRecords bool
	// Up converts the store from Version-1, adding what it has to report
	// to res. It must be idempotent: a run interrupted after Up but before
	// the version was recorded runs it again.
	Up func(ctx context.Context, c redis.UniversalClient, opts Options, res *Result) error
}

// Records converts session records in ways that take the encryption keys,
// which only the session store holds; *sessions.Store implements it. This
// package sees Redis only, so the conversion comes in through here.
type Records interface {
	// UpgradeRecords converts the version 1 session records among ids to
	// version 2 in place, each with a compare-and-set, and skips ids
	// without a record or with a record at another version. It returns how
	// many it converted and the ids of those it could not open, which it
	// left as they were.
	UpgradeRecords(ctx context.Context, ids []string) (upgraded int, unreadable []string, err error)
}

// Options are what Apply needs besides Redis.
type Options struct {
	// Records converts the session records for step 3. Without it, step 3
	// fails on the first version 1 record it meets; a store that has none
	// (a new one) migrates all the same.
	Records Records
	// Settle is how long Apply waits, after recording the version of a
	// step that converts records, before running the step once more: a
	// broker that read the version before it was recorded may still write
	// a record in the old layout, and the second run converts it. Zero
	// runs each step once, for a store no broker serves.
	Settle time.Duration
}

// Settle is the Options.Settle of `broker migrate`: longer than a broker's
// login takes from reading the schema version to writing the record, with
// the store's timeouts and one retry.
const Settle = 5 * time.Second

// Result says what Apply did.
type Result struct {
	// From and To are the schema versions before and after.
	From, To int
	// Upgraded counts the session records step 3 converted; Unreadable
	// those it could not open and left, of which UnreadableIDs names the
	// first MaxReportedIDs.
	Upgraded      int
	Unreadable    int
	UnreadableIDs []string
}

// MaxReportedIDs bounds Result.UnreadableIDs.
const MaxReportedIDs = 20

// ErrRecordsNeeded is the error of a step that met a session record to
// convert without Options.Records.
var ErrRecordsNeeded = errors.New("session records to convert, and no session store (encryption keys) to convert them with")

// steps are ordered by Version, which counts up from 1 without gaps.
var steps = []Step{
	{
		// Version 1 is the layout the broker started with, kept by package
		// sessions (every key of one atomic operation shares a hash tag):
		//
		//	broker:session:{<id>}             hash: one session, tokens and
		//	                                  claims sealed in field tok
		//	broker:session:{<id>}:lock        string: refresh lease owner
		//	broker:user:{<base64url(sub)>}    zset: session ids by absolute expiry
		//	broker:sid:{<base64url(sid)>}     zset: likewise, by ID token sid
		//	broker:audit                      stream: capped audit trail
		//
		// An empty store already has it, so there is nothing to convert.
		Version: 1,
		Name:    "initial key layout",
		Up:      func(context.Context, redis.UniversalClient, Options, *Result) error { return nil },
	},
	{
		// Version 2 adds an index of every session by absolute expiry, so
		// that operators can count and walk the live sessions without a
		// SCAN of the whole keyspace, spread over sixteen keys so that it is
		// no hot key on Cluster:
		//
		//	broker:expiry:{<0-f>}   zset: session ids by absolute expiry; the
		//	                        shard is FNV-1a(id) mod 16
		//
		// Create writes it from this version on; the step indexes the
		// sessions written before.
		Version: 2,
		Name:    "index sessions by expiry",
		Up: func(ctx context.Context, c redis.UniversalClient, _ Options, _ *Result) error {
			return indexByExpiry(ctx, c)
		},
	},
	{
		// Version 3 binds every field of a session that grants access or
		// decides how long it lives to the encryption, so that a record
		// edited in Redis fails to open instead of being read with the
		// edits, and adds what the fenced refresh and the durable endings
		// keep:
		//
		//	broker:session:{<id>}           hash, record version v=2: clear
		//	                                gen, secret_hash, sub, sid,
		//	                                client_id, created_at, abs_exp,
		//	                                idle, last_used_at, ip, ua;
		//	                                sealed claims, tok and lu (last
		//	                                use), each bound to the id and
		//	                                field, claims and tok to the
		//	                                clear fields above but ip, ua and
		//	                                last_used_at, tok to gen too
		//	broker:session:{<id>}:ended     hash: tombstone of an ended
		//	                                session, its record and why it
		//	                                ended, kept 24 hours
		//	broker:ends                     zset: session ids whose end still
		//	                                owes work, by end time
		//	broker:used:{<base64url(sha256(id))>}
		//	                                string: a one-time token id seen
		//
		// The step converts the version 1 records (claims sealed inside
		// tok, last use in the clear) in place, at generation 1, through
		// Options.Records; those it cannot open stay as they are and are
		// reported.
		Version:      3,
		Name:         "bind every field of a session by the encryption",
		NeedsRecords: true,
		Up:           bindFields,
	},
}

// Steps returns the migration steps in the order they apply.
func Steps() []Step {
	return append([]Step(nil), steps...)
}

// Latest is the schema version this broker reads and writes.
func Latest() int {
	return steps[len(steps)-1].Version
}

// Oldest is the oldest schema version this broker serves: the one before
// Latest, whose session records it reads and writes too (package sessions
// keeps both layouts). Brokers of this version can thus be rolled out on a
// store of the previous one and serve while `broker migrate` runs.
func Oldest() int {
	return Latest() - 1
}

// Errors of Check and Apply, for errors.Is.
var (
	ErrStoreOlder = errors.New("store schema is older than this broker")
	ErrStoreNewer = errors.New("store schema is newer than this broker")
)

// Current returns the store's schema version: 0 for a store that was never
// migrated.
func Current(ctx context.Context, c redis.UniversalClient) (int, error) {
	raw, err := c.Get(ctx, VersionKey).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("read schema version: %s holds %q, not a version number", VersionKey, raw)
	}
	return v, nil
}

// Check reports whether this broker can serve the store: nil for a store
// at a version from Oldest to Latest, an error wrapping ErrStoreOlder or
// ErrStoreNewer that tells the operator what to do otherwise.
func Check(ctx context.Context, c redis.UniversalClient) error {
	v, err := Current(ctx, c)
	if err != nil {
		return err
	}
	return Compatible(v)
}

// Compatible is Check of a version already read with Current.
func Compatible(v int) error {
	return compare(v)
}

func compare(v int) error {
	switch latest := Latest(); {
	case v < Oldest():
		return fmt.Errorf("%w: store schema version %d is older than %d, the oldest this broker serves: run `broker migrate` (brokers of this version serve a store from version %d on)", ErrStoreOlder, v, Oldest(), Oldest())
	case v > latest:
		return fmt.Errorf("%w: store schema version %d is newer than this broker knows (%d): upgrade the broker", ErrStoreNewer, v, latest)
	}
	return nil
}

// Apply runs the steps the store has not had yet, in order, and records the
// version after each, so that an interrupted run resumes where it stopped.
// It refuses a store newer than this broker, whose layout it cannot know.
// Apply does not guard against a concurrent run; each step being idempotent,
// two runs at once repeat work but reach the same end.
func Apply(ctx context.Context, c redis.UniversalClient, opts Options) (Result, error) {
	from, err := Current(ctx, c)
	if err != nil {
		return Result{}, err
	}
	res := Result{From: from, To: from}
	if from > Latest() {
		return res, compare(from)
	}
	for _, step := range steps {
		if step.Version <= res.To {
			continue
		}
		if err := step.Up(ctx, c, opts, &res); err != nil {
			return res, fmt.Errorf("migration %d (%s): %w", step.Version, step.Name, err)
		}
		if err := c.Set(ctx, VersionKey, step.Version, 0).Err(); err != nil {
			return res, fmt.Errorf("record schema version %d: %w", step.Version, err)
		}
		res.To = step.Version
		if step.NeedsRecords && opts.Settle > 0 {
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(opts.Settle):
			}
			// The second run meets again the records the first could not
			// open: its count of them is the one that stands.
			var again Result
			err := step.Up(ctx, c, opts, &again)
			res.Upgraded += again.Upgraded
			res.Unreadable, res.UnreadableIDs = again.Unreadable, again.UnreadableIDs
			if err != nil {
				return res, fmt.Errorf("migration %d (%s), second run: %w", step.Version, step.Name, err)
			}
		}
	}
	return res, nil
}

// Pending returns the steps the store has not had yet, in order; none for
// a store newer than this broker.
func Pending(ctx context.Context, c redis.UniversalClient) ([]Step, error) {
	v, err := Current(ctx, c)
	if err != nil {
		return nil, err
	}
	var pending []Step
	for _, step := range steps {
		if step.Version > v {
			pending = append(pending, step)
		}
	}
	return pending, nil
}
