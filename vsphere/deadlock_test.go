package vsphere_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
)

// TestConfigureWhileWatching creates replicas and applies the profile to
// many VMs at once while change feeds run, as coordinators configuring a
// large policy do: vCenter must not deadlock. In the simulator a creation
// holds a container view's lock while it notifies the filter on that view;
// a reconfigure holds its VM's lock while it registers its task (which
// takes every view's lock); and a filter on a view that changed re-reads
// the view holding the filter's lock while it locks each VM in turn.
func TestConfigureWhileWatching(t *testing.T) {
	const vms, workers, watchers = 120, 16, 4
	e := newEnv(t, vcsim.Options{ProtectedVMs: vms, ProxyVMs: -1, Workers: 8, DiskSizesMB: []int64{1}})
	ctx, cancel := context.WithCancel(e.ctx)
	defer cancel()
	src := e.inv.ClusterByName(vcsim.SourceClusterName).MoRef
	st, err := e.c.InstallFilter(e.ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	var sources []vsphere.VM
	for _, vm := range e.inv.VMs {
		if vm.Cluster == src {
			sources = append(sources, vm)
		}
	}

	synced := make(chan struct{}, watchers)
	watchDone := make(chan error, watchers)
	for i := 0; i < watchers; i++ {
		go func() {
			watchDone <- e.c.Watch(ctx, func(c vsphere.Change) {
				if c.Kind == vsphere.Synced {
					synced <- struct{}{}
				}
			})
		}()
	}
	for i := 0; i < watchers; i++ {
		select {
		case <-synced:
		case <-time.After(30 * time.Second):
			t.Fatal("feed did not sync")
		}
	}

	done := make(chan error, 1)
	go func() { done <- configure(e, sources, "policy-1", st.ProfileID, workers) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		// The simulator's stuck handlers would keep its server (and
		// the cleanups) from ending: end the run here, with every
		// goroutine's stack.
		buf := make([]byte, 16<<20)
		buf = buf[:runtime.Stack(buf, true)]
		fmt.Fprintf(os.Stderr, "--- FAIL: %s: configuration stuck; goroutines:\n%s\n", t.Name(), buf)
		os.Exit(1)
	}
	if n := e.countReplicas(t); n != len(sources) {
		t.Fatalf("%d replicas for %d VMs", n, len(sources))
	}
	cancel()
	for i := 0; i < watchers; i++ {
		select {
		case err := <-watchDone:
			if err != nil {
				t.Errorf("watch: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("watch did not stop")
		}
	}
}
