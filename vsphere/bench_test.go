package vsphere_test

import (
	"context"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
)

// benchVMs is the size of the benchmark vCenter (CONTINUUM_BENCH_VMS
// overrides the default of 1,000).
func benchVMs() int {
	if n, err := strconv.Atoi(os.Getenv("CONTINUUM_BENCH_VMS")); err == nil && n > 0 {
		return n
	}
	return 1000
}

func benchEnv(b *testing.B) *env {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	b.Cleanup(cancel)
	srv, err := vcsim.Start(ctx, vcsim.Options{ProtectedVMs: benchVMs(), ProxyVMs: -1, Workers: 8}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Close)
	c, err := vsphere.Connect(ctx, connectCfg(srv))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close(context.Background()) })
	inv, err := c.Inventory(ctx)
	if err != nil {
		b.Fatal(err)
	}
	return &env{srv: srv, c: c, inv: inv, ctx: ctx}
}

func BenchmarkInventory1000(b *testing.B) {
	e := benchEnv(b)
	b.ResetTimer()
	for b.Loop() {
		inv, err := e.c.Inventory(e.ctx)
		if err != nil {
			b.Fatal(err)
		}
		if len(inv.VMs) != benchVMs() {
			b.Fatalf("%d VMs", len(inv.VMs))
		}
	}
	b.ReportMetric(float64(benchVMs())*float64(b.N)/b.Elapsed().Seconds(), "vms/s")
}

// configure creates the replica of every source VM and applies the profile
// to its disks, with the given number of workers.
func configure(e *env, sources []vsphere.VM, policy, profile string, workers int) error {
	cl := e.inv.ClusterByName(vcsim.TargetClusterName)
	dss := []string{e.inv.DatastoreByName(vcsim.TargetDatastoreName(0)).MoRef, e.inv.DatastoreByName(vcsim.TargetDatastoreName(1)).MoRef}
	work := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				src := sources[i]
				spec := vsphere.ReplicaSpec{
					SourceVM: src.MoRef, PolicyID: policy, Name: src.Name + "-" + policy,
					Host: cl.Hosts[i%len(cl.Hosts)], Datastore: dss[i%len(dss)],
					Pool: cl.ResourcePool, Folder: e.inv.Datacenters[0].VMFolder,
				}
				if _, err := e.c.EnsureReplica(e.ctx, spec); err != nil {
					errs <- err
					return
				}
				if err := e.c.ApplyPolicy(e.ctx, src.MoRef, profile); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
loop:
	for i := range sources {
		select {
		case work <- i:
		case err = <-errs:
			break loop
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// configureRun builds a fresh vCenter and configures all its VMs with the
// given number of workers, returning the time the configuration took. Each
// mode gets its own vCenter: the simulator's per-VM costs grow with the
// number of VMs, so a second run on the same one would be slower for that
// reason alone.
func configureRun(b *testing.B, workers int) time.Duration {
	b.Helper()
	e := benchEnv(b)
	st, err := e.c.InstallFilter(e.ctx, e.inv.ClusterByName(vcsim.SourceClusterName).MoRef)
	if err != nil {
		b.Fatal(err)
	}
	var sources []vsphere.VM
	for _, vm := range e.inv.VMs {
		if vm.Cluster == e.inv.ClusterByName(vcsim.SourceClusterName).MoRef {
			sources = append(sources, vm)
		}
	}
	start := time.Now()
	if err := configure(e, sources, "policy-1", st.ProfileID, workers); err != nil {
		b.Fatal(err)
	}
	d := time.Since(start)
	inv, err := e.c.Inventory(e.ctx)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for _, vm := range inv.VMs {
		if vm.Replica != nil {
			n++
		}
	}
	if n != len(sources) {
		b.Fatalf("%d replicas for %d VMs", n, len(sources))
	}
	return d
}

// BenchmarkConfigure1000 creates the replica of every VM of a 1,000-VM
// vCenter and applies the CDP profile to its disks: once one VM at a time
// (the baseline) and once with parallel workers, and reports both and their
// ratio.
func BenchmarkConfigure1000(b *testing.B) {
	const workers = 4
	var seq, par time.Duration
	for i := 0; i < b.N; i++ {
		seq += configureRun(b, 1)
		par += configureRun(b, workers)
	}
	n := float64(b.N)
	b.ReportMetric(seq.Seconds()/n, "seq-s")
	b.ReportMetric(par.Seconds()/n, "par-s")
	b.ReportMetric(seq.Seconds()/par.Seconds(), "speedup-x")
	b.ReportMetric(float64(benchVMs())*n/par.Seconds(), "par-vms/s")
}
