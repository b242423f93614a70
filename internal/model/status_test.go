package model

import (
	"strings"
	"testing"
	"time"
)

func TestLagStatus(t *testing.T) {
	p := &Policy{RPOWarning: Duration(10 * time.Second), RPOError: Duration(30 * time.Second)}
	for _, tc := range []struct {
		lag  time.Duration
		want VMStatus
	}{
		{0, StatusSyncing}, {10 * time.Second, StatusSyncing}, {11 * time.Second, StatusWarning},
		{30 * time.Second, StatusWarning}, {31 * time.Second, StatusError},
	} {
		st, reason := LagStatus(p, tc.lag)
		if st != tc.want {
			t.Errorf("lag %s: %s, want %s", tc.lag, st, tc.want)
		}
		if (st == StatusSyncing) != (reason == "") || (reason != "" && !strings.HasPrefix(reason, LagReasonPrefix)) {
			t.Errorf("lag %s: reason %q", tc.lag, reason)
		}
	}
	if st, _ := LagStatus(&Policy{}, time.Hour); st != StatusSyncing {
		t.Fatalf("no thresholds: %s", st)
	}
}
