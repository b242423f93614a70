package vsphere

import (
	"context"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// maxPoll caps the interval between polls of a running task.
const maxPoll = 100 * time.Millisecond

// waitTask polls the task's info rather than waiting on property updates:
// a poll answers as soon as the task ends, while update batching (20 ms in
// the simulator, more on a loaded vCenter) paces every waiter. The interval
// grows so a long task costs few calls.
func (c *Client) waitTask(ctx context.Context, t *object.Task) (types.AnyType, error) {
	r := t.Reference()
	var m mo.Task
	delay := 2 * time.Millisecond
	for {
		if err := c.props(ctx, r, []string{"info.state", "info.result", "info.error", "info.description"}, &m); err != nil {
			return nil, err
		}
		switch m.Info.State {
		case types.TaskInfoStateSuccess:
			return m.Info.Result, nil
		case types.TaskInfoStateError:
			if m.Info.Error == nil {
				return nil, task.Error{LocalizedMethodFault: &types.LocalizedMethodFault{Fault: &types.SystemError{}, LocalizedMessage: "task failed"}}
			}
			return nil, task.Error{LocalizedMethodFault: m.Info.Error, Description: m.Info.Description}
		}
		tm := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			tm.Stop()
			return nil, ctx.Err()
		case <-tm.C:
		}
		delay = min(delay*2, maxPoll)
	}
}
