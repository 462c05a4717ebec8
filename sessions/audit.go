package sessions

import (
	"context"
	"fmt"
	"time"

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
)

// Append adds an event to the audit stream. An event without a time is
// stamped with the store's clock. Redis trims the stream to about
// AuditMaxLen entries as it goes, in whole nodes, which keeps XADD cheap.
func (s *Store) Append(ctx context.Context, e broker.AuditEvent) error {
	t := e.Time
	if t.IsZero() {
		t = s.now()
	}
	err := s.client.XAdd(ctx, &redis.XAddArgs{
		Stream: auditKey,
		MaxLen: s.auditMaxLen,
		Approx: true,
		Values: []any{
			auditFieldTime, t.UTC().Format(auditTimeFormat),
			auditFieldActor, e.Actor,
			auditFieldAction, e.Action,
			auditFieldSessionID, e.SessionID,
			auditFieldSubject, e.Subject,
			auditFieldOutcome, e.Outcome,
			auditFieldDetail, e.Detail,
		},
	}).Err()
	if err != nil {
		return storeError("append audit event", err)
	}
	return nil
}

// List returns up to limit events, newest first; none for a limit below 1.
func (s *Store) List(ctx context.Context, limit int) ([]broker.AuditEvent, error) {
	if limit < 1 {
		return []broker.AuditEvent{}, nil
	}
	msgs, err := s.client.XRevRangeN(ctx, auditKey, "+", "-", int64(limit)).Result()
	if err != nil {
		return nil, storeError("list audit events", err)
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
