package sessions

import (
	"context"
	"crypto/rand"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mobile-token-broker/broker/broker"
	"github.com/redis/go-redis/v9"
)

// auditTimeFormat is RFC 3339 with milliseconds, the stream's own precision.
const auditTimeFormat = "2006-01-02T15:04:05.000Z07:00"

// Fields of an audit stream entry.
const (
	auditFieldTime      = "time"
	auditFieldActor     = "actor"
	auditFieldAction    = "action"
	auditFieldSessionID = "session_id"
	auditFieldSubject   = "sub"
	auditFieldOutcome   = "outcome"
	auditFieldDetail    = "detail"
	auditFieldIP        = "ip"
	auditFieldUserAgent = "user_agent"
	auditFieldRequestID = "request_id"
)

// The append script adds one more field, event_id, random per Append call,
// so that a repeat of the call is recognised and adds nothing.

// maxAuditFieldLen bounds each stored audit field but the detail, which
// broker.MaxAuditDetailLen bounds. The broker truncates what clients send
// already; the store bounds it again so that no caller can grow the capped
// stream without bound.
const maxAuditFieldLen = 256

// Append adds an event to the audit stream. An event without a time is
// stamped with the store's clock. Redis trims the stream to about
// AuditMaxLen entries as it goes, in whole nodes, which keeps XADD cheap.
func (s *Store) Append(ctx context.Context, e broker.AuditEvent) error {
	t := e.Time
	if t.IsZero() {
		t = s.now()
	}
	err := appendAuditScript.Run(ctx, s.client, []string{auditKey}, s.auditMaxLen, rand.Text(),
		auditFieldTime, t.UTC().Format(auditTimeFormat),
		auditFieldActor, truncate(e.Actor, maxAuditFieldLen),
		auditFieldAction, truncate(e.Action, maxAuditFieldLen),
		auditFieldSessionID, truncate(e.SessionID, maxAuditFieldLen),
		auditFieldSubject, truncate(e.Subject, maxAuditFieldLen),
		auditFieldOutcome, truncate(e.Outcome, maxAuditFieldLen),
		auditFieldDetail, truncate(e.Detail, broker.MaxAuditDetailLen),
		auditFieldIP, truncate(e.ClientIP, broker.MaxIPLen),
		auditFieldUserAgent, truncate(e.UserAgent, broker.MaxUserAgentLen),
		auditFieldRequestID, truncate(e.RequestID, broker.MaxRequestIDLen),
	).Err()
	if err != nil {
		return storeError(ctx, "append audit event", err)
	}
	return nil
}

// truncate cuts s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	// Drop a sequence the cut left incomplete: at most three bytes of it.
	for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size != 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return strings.ToValidUTF8(s, "")
}

// List returns up to limit events, newest first; none for a limit below 1.
func (s *Store) List(ctx context.Context, limit int) ([]broker.AuditEvent, error) {
	if limit < 1 {
		return []broker.AuditEvent{}, nil
	}
	msgs, err := s.client.XRevRangeN(ctx, auditKey, "+", "-", int64(limit)).Result()
	if err != nil {
		return nil, storeError(ctx, "list audit events", err)
	}
	events := make([]broker.AuditEvent, 0, len(msgs))
	for _, m := range msgs {
		e, err := auditEventOf(m)
		if err != nil {
			return nil, fmt.Errorf("list audit events: %w", err)
		}
		events = append(events, e)
	}
	return events, nil
}

// auditEventOf reads a stream entry. Entries written before the client
// fields existed have them empty.
func auditEventOf(m redis.XMessage) (broker.AuditEvent, error) {
	field := func(name string) string {
		v, _ := m.Values[name].(string)
		return v
	}
	t, err := time.Parse(time.RFC3339Nano, field(auditFieldTime))
	if err != nil {
		return broker.AuditEvent{}, fmt.Errorf("entry %s has no valid time", m.ID)
	}
	return broker.AuditEvent{
		ID:        m.ID,
		Time:      t.UTC(),
		Actor:     field(auditFieldActor),
		Action:    field(auditFieldAction),
		SessionID: field(auditFieldSessionID),
		Subject:   field(auditFieldSubject),
		Outcome:   field(auditFieldOutcome),
		Detail:    field(auditFieldDetail),
		ClientIP:  field(auditFieldIP),
		UserAgent: field(auditFieldUserAgent),
		RequestID: field(auditFieldRequestID),
	}, nil
}

// Bounds of one Search call: it reads the stream in batches of
// auditSearchBatch entries and examines at most auditSearchScan of them,
// so that a filter that matches little costs a bounded number of round
// trips; the caller goes on from the cursor it returns.
const (
	auditSearchBatch = 500
	auditSearchScan  = 10000
)

// Search reads the stream newest first from just before q.Before,
// keeping the events q matches, until it has q.Limit of them, reaches the
// oldest entry or has examined auditSearchScan entries. The cursor is a
// stream entry id, whose order is the order of appending (Redis's clock,
// which the event times, from the brokers' clocks, follow closely but not
// exactly: the time range filters on the events' own times).
func (s *Store) Search(ctx context.Context, q broker.AuditQuery) ([]broker.AuditEvent, string, error) {
	const op = "search audit events"
	events := []broker.AuditEvent{}
	if q.Limit < 1 {
		return events, "", nil
	}
	end := "+"
	if q.Before != "" {
		ms, seq, ok := parseStreamID(q.Before)
		switch {
		case !ok:
			return nil, "", fmt.Errorf("%s: %w", op, broker.ErrBadCursor)
		case ms == 0 && seq == 0:
			// Nothing comes before the first possible id.
			return events, "", nil
		}
		end = streamIDBefore(ms, seq)
	}
	last := ""
	for scanned := 0; scanned < auditSearchScan; {
		count := min(auditSearchBatch, auditSearchScan-scanned)
		if last != "" {
			ms, seq, _ := parseStreamID(last)
			if ms == 0 && seq == 0 {
				return events, "", nil
			}
			end = streamIDBefore(ms, seq)
		}
		msgs, err := s.client.XRevRangeN(ctx, auditKey, end, "-", int64(count)).Result()
		if err != nil {
			return nil, "", storeError(ctx, op, err)
		}
		for _, m := range msgs {
			scanned++
			e, err := auditEventOf(m)
			if err != nil {
				return nil, "", fmt.Errorf("%s: %w", op, err)
			}
			if q.Match(e) {
				events = append(events, e)
				if len(events) == q.Limit {
					return events, m.ID, nil
				}
			}
			last = m.ID
		}
		if len(msgs) < count {
			return events, "", nil
		}
	}
	return events, last, nil
}

// streamIDBefore returns the greatest stream id below ms-seq (not 0-0), as
// an inclusive bound: XREVRANGE's exclusive "(" bound needs Redis 6.2.
func streamIDBefore(ms, seq uint64) string {
	if seq == 0 {
		return strconv.FormatUint(ms-1, 10) + "-" + strconv.FormatUint(math.MaxUint64, 10)
	}
	return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq-1, 10)
}

// parseStreamID reads a stream entry id, "<ms>-<seq>", two unsigned 64-bit
// decimals.
func parseStreamID(id string) (ms, seq uint64, ok bool) {
	a, b, ok := strings.Cut(id, "-")
	if !ok || a == "" || b == "" || a[0] == '+' || b[0] == '+' {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}
