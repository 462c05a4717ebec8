package sessions

import (
	"context"
	"crypto/rand"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/mobile-token-broker/broker/broker"
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
		field := func(name string) string {
			v, _ := m.Values[name].(string)
			return v
		}
		t, err := time.Parse(time.RFC3339Nano, field(auditFieldTime))
		if err != nil {
			return nil, fmt.Errorf("list audit events: entry %s has no valid time", m.ID)
		}
		events = append(events, broker.AuditEvent{
			Time:      t.UTC(),
			Actor:     field(auditFieldActor),
			Action:    field(auditFieldAction),
			SessionID: field(auditFieldSessionID),
			Subject:   field(auditFieldSubject),
			Outcome:   field(auditFieldOutcome),
			Detail:    field(auditFieldDetail),
		})
	}
	return events, nil
}
