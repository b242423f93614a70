package model

import (
	"fmt"
	"time"
)

// LagReasonPrefix starts the reason of a Warning or Error that comes from
// the achieved lag rather than from configuration, so that the reconciler
// leaves such a status to the data-path reports.
const LagReasonPrefix = "lag "

// LagStatus applies the policy's RPO thresholds to a reported lag: Syncing,
// or Warning or Error with a reason that starts with LagReasonPrefix.
func LagStatus(p *Policy, lag time.Duration) (VMStatus, string) {
	switch {
	case p.RPOError > 0 && lag > p.RPOError.D():
		return StatusError, fmt.Sprintf("%s%s exceeds the RPO error threshold %s", LagReasonPrefix, lag.Round(time.Millisecond), p.RPOError)
	case p.RPOWarning > 0 && lag > p.RPOWarning.D():
		return StatusWarning, fmt.Sprintf("%s%s exceeds the RPO warning threshold %s", LagReasonPrefix, lag.Round(time.Millisecond), p.RPOWarning)
	}
	return StatusSyncing, ""
}
