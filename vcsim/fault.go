package vcsim

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// hooks sit in front of the simulator's dispatch (Registry.Handler): they
// record storage profile specs and apply the lab's fault injection that the
// simulator's own fault injector cannot express (slow calls, a task that
// fails after its work is done).
type hooks struct {
	mu                sync.Mutex
	slow              map[string]time.Duration
	failAfterCreate   int
	createdThenFailed int
}

func (h *hooks) handle(assoc *profileAssociations) func(*simulator.Context, *simulator.Method) (mo.Reference, types.BaseMethodFault) {
	return func(ctx *simulator.Context, m *simulator.Method) (mo.Reference, types.BaseMethodFault) {
		h.mu.Lock()
		delay := h.slow[m.Name]
		if delay == 0 {
			delay = h.slow["*"]
		}
		fail := false
		if m.Name == "CreateVM_Task" && h.failAfterCreate > 0 {
			h.failAfterCreate--
			fail = true
		}
		h.mu.Unlock()
		if delay > 0 {
			time.Sleep(delay)
		}
		switch req := m.Body.(type) {
		case *types.ReconfigVM_Task:
			assoc.record(m.This, &req.Spec)
		}
		if fail && ctx.Session != nil {
			// The dispatcher prefers the session's registry over the
			// handler returned here, so the substitute goes there for
			// this one call.
			if f, ok := ctx.Map.Get(m.This).(*simulator.Folder); ok {
				ctx.Session.Registry.Put(&failingFolder{Folder: f, h: h})
			}
		}
		return nil, nil
	}
}

// SlowCalls delays every call of the named SOAP method ("*" for all) by d
// before it runs; d = 0 removes the delay.
func (s *Server) SlowCalls(method string, d time.Duration) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	if s.hooks.slow == nil {
		s.hooks.slow = make(map[string]time.Duration)
	}
	if d <= 0 {
		delete(s.hooks.slow, method)
		return
	}
	s.hooks.slow[method] = d
}

// FailCreateVMAfterCreate makes the next n CreateVM_Task calls create the VM
// and then report the task as failed, as vCenter does when a host drops
// during the final steps of a create.
func (s *Server) FailCreateVMAfterCreate(n int) {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.failAfterCreate = n
}

// CreatedThenFailed counts the creates failed by FailCreateVMAfterCreate.
func (s *Server) CreatedThenFailed() int {
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	return s.hooks.createdThenFailed
}

// FailMethod makes the next count calls of a SOAP method fail with fault
// before they run (count 0: every call), using the simulator's injector.
func (s *Server) FailMethod(method string, count int, fault types.BaseMethodFault) {
	s.model.Service.AddFaultRule(&simulator.FaultInjectionRule{
		MethodName:  method,
		ObjectType:  "*",
		ObjectName:  "*",
		Probability: 1,
		FaultType:   simulator.FaultTypeCustom,
		Fault:       fault,
		MaxCount:    count,
		Enabled:     true,
	})
}

// ClearFaults removes every injected fault and delay.
func (s *Server) ClearFaults() {
	s.model.Service.ClearFaultRules()
	s.hooks.mu.Lock()
	defer s.hooks.mu.Unlock()
	s.hooks.slow = nil
	s.hooks.failAfterCreate = 0
}

// DropSessions terminates every client session, as a vCenter restart or a
// session timeout would; clients see NotAuthenticated on their next call.
func (s *Server) DropSessions(ctx context.Context) (int, error) {
	c, err := s.Client(ctx)
	if err != nil {
		return 0, err
	}
	defer func() { _ = c.Logout(context.Background()) }()
	var sm mo.SessionManager
	ref := *c.ServiceContent.SessionManager
	if err := object.NewCommon(c.Client, ref).Properties(ctx, ref, []string{"sessionList", "currentSession"}, &sm); err != nil {
		return 0, fmt.Errorf("drop sessions: list: %w", err)
	}
	var keys []string
	for _, us := range sm.SessionList {
		if sm.CurrentSession != nil && us.Key == sm.CurrentSession.Key {
			continue
		}
		keys = append(keys, us.Key)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	if _, err := methods.TerminateSession(ctx, c.Client, &types.TerminateSession{This: ref, SessionId: keys}); err != nil {
		return 0, fmt.Errorf("drop sessions: terminate: %w", err)
	}
	return len(keys), nil
}

// failingFolder runs the real CreateVM and then fails its task.
type failingFolder struct {
	*simulator.Folder
	h *hooks
}

func (f *failingFolder) CreateVMTask(ctx *simulator.Context, req *types.CreateVM_Task) soap.HasFault {
	ctx.Session.Registry.Remove(ctx, f.Self)
	inner := f.Folder.CreateVMTask(ctx, req).(*methods.CreateVM_TaskBody)
	if inner.Fault_ != nil {
		return inner
	}
	innerTask, _ := ctx.Map.Get(inner.Res.Returnval).(*simulator.Task)
	task := simulator.CreateTask(f.Folder, "createVm", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if innerTask != nil {
			innerTask.Wait()
		}
		f.h.mu.Lock()
		f.h.createdThenFailed++
		f.h.mu.Unlock()
		return nil, systemError("lab fault: host connection lost after the VM was created")
	})
	return &methods.CreateVM_TaskBody{Res: &types.CreateVM_TaskResponse{Returnval: task.Run(ctx)}}
}

func sleepCtx(ctx context.Context, ms int) error {
	t := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
