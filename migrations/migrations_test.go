package migrations

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/mobile-token-broker/broker/internal/redistest"
)

func TestSteps(t *testing.T) {
	steps := Steps()
	if len(steps) == 0 {
		t.Fatal("Steps() is empty")
	}
	for i, s := range steps {
		if s.Version != i+1 {
			t.Errorf("step %d has Version %d, want %d: versions count up from 1 without gaps", i, s.Version, i+1)
		}
		if s.Name == "" || s.Up == nil {
			t.Errorf("step %d lacks a Name or an Up", s.Version)
		}
	}
	if steps[0].Name != "initial key layout" {
		t.Errorf("step 1 is %q, want %q", steps[0].Name, "initial key layout")
	}
	if Latest() != steps[len(steps)-1].Version {
		t.Errorf("Latest() = %d, want %d", Latest(), steps[len(steps)-1].Version)
	}
	steps[0].Name = "changed by a caller"
	if Steps()[0].Name == "changed by a caller" {
		t.Error("Steps() hands out the package's own slice")
	}
}

func TestApply(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)

	if v, err := Current(ctx, c); err != nil || v != 0 {
		t.Fatalf("Current on a fresh store = %d, %v; want 0, nil", v, err)
	}
	err := Check(ctx, c)
	if !errors.Is(err, ErrStoreOlder) || !strings.Contains(err.Error(), "run `broker migrate`") {
		t.Errorf("Check on a fresh store = %v, want ErrStoreOlder telling to run broker migrate", err)
	}

	// A fresh store holds no session to convert: no Records needed.
	res, err := Apply(ctx, c, Options{})
	if err != nil || !reflect.DeepEqual(res, Result{From: 0, To: Latest()}) {
		t.Fatalf("Apply on a fresh store = %+v, %v; want from 0 to %d, nil", res, err, Latest())
	}
	raw, err := c.Get(ctx, VersionKey).Result()
	if err != nil || raw != strconv.Itoa(Latest()) {
		t.Errorf("%s = %q, %v; want %q", VersionKey, raw, err, strconv.Itoa(Latest()))
	}
	if err := Check(ctx, c); err != nil {
		t.Errorf("Check after Apply = %v, want nil", err)
	}

	res, err = Apply(ctx, c, Options{})
	if err != nil || res.From != Latest() || res.To != Latest() {
		t.Errorf("Apply again = %+v, %v; want from and to %d, nil", res, err, Latest())
	}
	if pending, err := Pending(ctx, c); err != nil || len(pending) != 0 {
		t.Errorf("Pending after Apply = %v, %v; want none", pending, err)
	}
}

func TestNewerStore(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	newer := Latest() + 1
	if err := c.Set(ctx, VersionKey, newer, 0).Err(); err != nil {
		t.Fatal(err)
	}

	err := Check(ctx, c)
	if !errors.Is(err, ErrStoreNewer) || !strings.Contains(err.Error(), "upgrade the broker") {
		t.Errorf("Check on a newer store = %v, want ErrStoreNewer telling to upgrade the broker", err)
	}
	res, err := Apply(ctx, c, Options{})
	if !errors.Is(err, ErrStoreNewer) || res.From != newer || res.To != newer {
		t.Errorf("Apply on a newer store = %+v, %v; want from and to %d, ErrStoreNewer", res, err, newer)
	}
	if v, err := Current(ctx, c); err != nil || v != newer {
		t.Errorf("version after a refused Apply = %d, %v; want %d left alone", v, err, newer)
	}
}

func TestCorruptVersion(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	for _, raw := range []string{"one", "-1", "1.5", ""} {
		if err := c.Set(ctx, VersionKey, raw, 0).Err(); err != nil {
			t.Fatal(err)
		}
		if v, err := Current(ctx, c); err == nil {
			t.Errorf("Current with %s = %q = %d, nil; want an error", VersionKey, raw, v)
		}
		if _, err := Apply(ctx, c, Options{}); err == nil {
			t.Errorf("Apply with %s = %q = nil, want an error", VersionKey, raw)
		}
	}
}

// TestCheckServesOneBehind: a broker serves a store at its schema version
// or the one before, and refuses one two behind or ahead, saying what to
// do.
func TestCheckServesOneBehind(t *testing.T) {
	ctx := context.Background()
	c := redistest.Start(t).Client(t)
	for v := 0; v <= Latest()+1; v++ {
		if err := c.Set(ctx, VersionKey, v, 0).Err(); err != nil {
			t.Fatal(err)
		}
		err := Check(ctx, c)
		switch {
		case v == Latest() || v == Latest()-1:
			if err != nil {
				t.Errorf("Check at version %d (this broker's: %d) = %v, want nil", v, Latest(), err)
			}
		case v < Latest():
			if !errors.Is(err, ErrStoreOlder) || !strings.Contains(err.Error(), "run `broker migrate`") {
				t.Errorf("Check at version %d = %v, want ErrStoreOlder telling to run broker migrate", v, err)
			}
		default:
			if !errors.Is(err, ErrStoreNewer) || !strings.Contains(err.Error(), "upgrade the broker") {
				t.Errorf("Check at version %d = %v, want ErrStoreNewer", v, err)
			}
		}
	}
	if Oldest() != Latest()-1 {
		t.Errorf("Oldest() = %d, want %d", Oldest(), Latest()-1)
	}
}
