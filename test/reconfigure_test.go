package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vcsim"
)

// reconfHeartbeatTimeout is the coordinators' component heartbeat timeout
// in the reconfiguration tests: short, so that a killed proxy is declared
// dead well within the 10 s its tasks have to move.
const reconfHeartbeatTimeout = 4 * time.Second

// startReconf starts the product as real processes, like startOrchestra,
// with two source proxies (so that one can die) and coordinators that
// declare a component dead after reconfHeartbeatTimeout. Nothing restarts
// a killed process.
func startReconf(t *testing.T, vms int) *orchestra {
	t.Helper()
	return startProduct(t, vms, productOptions{
		what:          "reconfiguration",
		coordArgs:     []string{"--heartbeat-timeout", reconfHeartbeatTimeout.String()},
		sourceProxies: []string{"src-a", "src-b"},
		maxTasks:      2000,
		alive:         reconfHeartbeatTimeout,
	})
}

// task returns the task of a VM (by name) under a policy.
func (o *orchestra) task(p *model.Policy, vm string) (*model.VMTask, error) {
	st, err := o.cl.PolicyStatus(context.Background(), p.ID)
	if err != nil {
		return nil, err
	}
	for _, tk := range st.Tasks {
		if tk.VMName == vm {
			return tk, nil
		}
	}
	return nil, fmt.Errorf("policy %s has no task for %s (%s: %s)", p.Name, vm, st.Status, st.Reason)
}

// vmDisks is `continuum vm disks VM -o json`.
func (o *orchestra) vmDisks(vm string) (client.VMDisks, error) {
	var d client.VMDisks
	out, err := o.cluster.cli(o.cluster.nodes[0].url(), "vm", "disks", vm, "-o", "json")
	if err != nil {
		return d, err
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		return d, fmt.Errorf("vm disks %s: %w\n%s", vm, err, out)
	}
	return d, nil
}

// points lists a VM's restore points through the CLI.
func (o *orchestra) points(vm string) ([]client.RestorePointInfo, error) {
	out, err := o.cluster.cli(o.cluster.nodes[0].url(), "restore-point", "list", vm, "-o", "json")
	if err != nil {
		return nil, err
	}
	var pts []client.RestorePointInfo
	if err := json.Unmarshal([]byte(out), &pts); err != nil {
		return nil, fmt.Errorf("points of %s: %w\n%s", vm, err, out)
	}
	return pts, nil
}

// latestRestoresEqual copies a disk from its NBD export (through the
// filter of the VM's current host), then waits until the VM's latest
// restore point, exported through the coordinator, equals it.
func (o *orchestra) latestRestoresEqual(vm string, disk client.VMDisk, d time.Duration) {
	o.t.Helper()
	src := filepath.Join(o.root, fmt.Sprintf("source-%s-%d.raw", vm, disk.Key))
	run(o.t, "qemu-img", "convert", "-f", "raw", "-O", "raw", disk.NBDURI, src)
	if st, err := os.Stat(src); err != nil || st.Size() != disk.CapacityBytes {
		o.t.Fatalf("source copy of %s disk %d: %v, want %d bytes", vm, disk.Key, err, disk.CapacityBytes)
	}
	img := filepath.Join(o.root, fmt.Sprintf("restored-%s-%d.raw", vm, disk.Key))
	o.eventually(fmt.Sprintf("latest point of %s disk %d equal to the source", vm, disk.Key), d, func() error {
		pts, err := o.points(vm)
		if err != nil {
			return err
		}
		if len(pts) == 0 {
			return fmt.Errorf("%s has no restore point", vm)
		}
		last := pts[len(pts)-1].ID
		if _, err := o.cluster.cli(o.cluster.nodes[0].url(), "restore-point", "export", vm, "--disk", fmt.Sprint(disk.Key),
			"--point", fmt.Sprint(last), "--out", img); err != nil {
			return err
		}
		if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, src).CombinedOutput(); err != nil {
			return fmt.Errorf("point %d differs: %v %s", last, err, out)
		}
		o.t.Logf("%s disk %d (%s): point %d of %d restores equal to the source", vm, disk.Key, disk.NBDURI, last, len(pts))
		return nil
	})
}

// writeNBD writes through an NBD export with qemu-io, retrying while the
// export is not served yet: a filter serves a disk once it has applied the
// configuration that names it, up to a heartbeat after the coordinators
// planned it.
func (o *orchestra) writeNBD(uri string, cmds ...string) {
	o.t.Helper()
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	args = append(args, "-c", "flush", uri)
	o.eventually("write through "+uri, 30*time.Second, func() error {
		out, err := exec.Command("qemu-io", args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("qemu-io %s: %v %s", strings.Join(args, " "), err, out)
		}
		return nil
	})
}

// writer keeps writing to a disk through NBD until stopped: a new pattern
// at a new offset each round, so that every round changes the disk.
type writer struct {
	stop   chan struct{}
	done   chan struct{}
	rounds atomic.Int64
	mu     sync.Mutex
	errs   []string
}

func startWriter(uri string, capacity int64) *writer {
	w := &writer{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		const chunk = 16 << 10
		for i := int64(0); ; i++ {
			select {
			case <-w.stop:
				return
			default:
			}
			off := (i * 37 * chunk) % (capacity - chunk)
			off -= off % chunk
			cmd := exec.Command("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x %d %d", 1+i%250, off, chunk), "-c", "flush", uri)
			if out, err := cmd.CombinedOutput(); err != nil {
				w.mu.Lock()
				w.errs = append(w.errs, fmt.Sprintf("round %d: %v %s", i, err, out))
				w.mu.Unlock()
				time.Sleep(100 * time.Millisecond)
				continue
			}
			w.rounds.Add(1)
			time.Sleep(50 * time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish() (int64, []string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rounds.Load(), w.errs
}

// vcClient logs in to the lab vCenter with govmomi: the test changes the
// source VMs the way an administrator would (add a disk, vMotion).
func (o *orchestra) vcClient(ctx context.Context) (*govmomi.Client, *find.Finder) {
	o.t.Helper()
	u, err := url.Parse(o.vcURL)
	if err != nil {
		o.t.Fatal(err)
	}
	u.User = url.UserPassword(vcsim.Username, vcsim.Password)
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		o.t.Fatal(err)
	}
	o.t.Cleanup(func() { _ = c.Logout(context.Background()) })
	f := find.NewFinder(c.Client, true)
	dc, err := f.DefaultDatacenter(ctx)
	if err != nil {
		o.t.Fatal(err)
	}
	f.SetDatacenter(dc)
	return c, f
}

// TestReconfigureWhileProtected changes a protected policy's world while
// writes go on: the source proxy dies, a disk is added, a VM is added and
// a VM moves to another host. Each time the coordinators re-plan the data
// path and the latest restore point equals the source.
func TestReconfigureWhileProtected(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	o := startReconf(t, 4)
	ctx := context.Background()
	vmA, vmB, vmC := vcsim.ProtectedVMName(0), vcsim.ProtectedVMName(1), vcsim.ProtectedVMName(2)
	p := o.policy("reconf", []string{vmA, vmB}, 0)
	o.waitSyncing(p, 3*time.Minute)
	o.checkReplicas(p)

	t.Run("source proxy killed", func(t *testing.T) {
		o.t = t
		tk, err := o.task(p, vmA)
		if err != nil {
			t.Fatal(err)
		}
		var victim string
		for name, px := range o.proxies {
			if px.ID == tk.SourceProxy {
				victim = name
			}
		}
		if victim == "" {
			t.Fatalf("task of %s has source proxy %q, not one of ours", vmA, tk.SourceProxy)
		}
		disks, err := o.vmDisks(vmA)
		if err != nil || len(disks.Disks) == 0 {
			t.Fatalf("disks of %s: %v %+v", vmA, err, disks)
		}
		d := disks.Disks[0]
		w := startWriter(d.NBDURI, d.CapacityBytes)
		defer func() {
			select {
			case <-w.stop:
			default:
				w.finish()
			}
		}()
		// Points are acknowledged before the kill: they must survive it.
		var before []client.RestorePointInfo
		o.eventually("restore points while writing", 30*time.Second, func() error {
			if w.rounds.Load() < 5 {
				return fmt.Errorf("%d writes so far", w.rounds.Load())
			}
			if before, err = o.points(vmA); err == nil && len(before) < 2 {
				err = fmt.Errorf("%d points", len(before))
			}
			return err
		})
		o.procs["proxy-"+victim].kill()
		killed := time.Now()
		t.Logf("killed source proxy %s of %s after %d writes; %d points listed", victim, vmA, w.rounds.Load(), len(before))
		var moved time.Duration
		o.eventually("another source proxy selected", 10*time.Second, func() error {
			tk, err := o.task(p, vmA)
			if err != nil {
				return err
			}
			if tk.SourceProxy == "" || tk.SourceProxy == o.proxies[victim].ID {
				return fmt.Errorf("source proxy %q (%s: %s)", tk.SourceProxy, tk.Status, tk.Reason)
			}
			moved = time.Since(killed)
			return nil
		})
		t.Logf("source proxy of %s changed %v after the kill", vmA, moved.Round(100*time.Millisecond))
		// Data keeps flowing through the new proxy.
		n0 := w.rounds.Load()
		o.eventually("writes after the switch", 30*time.Second, func() error {
			if w.rounds.Load() < n0+5 {
				return fmt.Errorf("%d writes since the switch", w.rounds.Load()-n0)
			}
			return nil
		})
		rounds, errs := w.finish()
		if len(errs) > 0 {
			t.Fatalf("%d of %d NBD writes failed: %s", len(errs), rounds, errs[0])
		}
		o.latestRestoresEqual(vmA, d, 90*time.Second)
		after, err := o.points(vmA)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range before {
			if !slices.ContainsFunc(after, func(a client.RestorePointInfo) bool { return a.ID == b.ID }) {
				t.Fatalf("point %d, listed before the kill, is gone: %+v", b.ID, after)
			}
		}
		for _, other := range []string{vmB} {
			tk, err := o.task(p, other)
			if err != nil {
				t.Fatal(err)
			}
			if tk.SourceProxy == o.proxies[victim].ID {
				t.Fatalf("%s still uses the dead proxy %s", other, victim)
			}
		}
	})

	o.t = t
	_, f := o.vcClient(ctx)

	o.t = t
	t.Run("disk added", func(t *testing.T) {
		o.t = t
		before, err := o.vmDisks(vmB)
		if err != nil {
			t.Fatal(err)
		}
		vm, err := f.VirtualMachine(ctx, vmB)
		if err != nil {
			t.Fatal(err)
		}
		devs, err := vm.Device(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ctrl, err := devs.FindDiskController("")
		if err != nil {
			t.Fatal(err)
		}
		ds, err := f.Datastore(ctx, vcsim.SourceDatastoreName(0))
		if err != nil {
			t.Fatal(err)
		}
		const addedMB = 3
		disk := devs.CreateDisk(ctrl, ds.Reference(), ds.Path(vmB+"/added.vmdk"))
		disk.CapacityInKB = addedMB << 10
		if err := vm.AddDevice(ctx, disk); err != nil {
			t.Fatalf("add a disk to %s: %v", vmB, err)
		}
		var added client.VMDisk
		o.eventually("the added disk protected", 60*time.Second, func() error {
			tk, err := o.task(p, vmB)
			if err != nil {
				return err
			}
			if len(tk.Disks) != len(before.Disks)+1 {
				return fmt.Errorf("task has %d disks, want %d (%s: %s)", len(tk.Disks), len(before.Disks)+1, tk.Status, tk.Reason)
			}
			if tk.Status != model.StatusSyncing && tk.Status != model.StatusWarning {
				return fmt.Errorf("%s: %s", tk.Status, tk.Reason)
			}
			now, err := o.vmDisks(vmB)
			if err != nil {
				return err
			}
			for _, d := range now.Disks {
				if !slices.ContainsFunc(before.Disks, func(b client.VMDisk) bool { return b.Key == d.Key }) {
					added = d
				}
			}
			if added.NBDURI == "" || added.CapacityBytes != addedMB<<20 {
				return fmt.Errorf("added disk as listed: %+v", added)
			}
			return nil
		})
		o.checkReplicas(p)
		o.writeNBD(added.NBDURI, "write -P 0x5a 0 64k", "write -P 0xa5 2m 8k")
		o.latestRestoresEqual(vmB, added, 90*time.Second)
	})

	o.t = t
	t.Run("VM added", func(t *testing.T) {
		o.t = t
		if _, err := o.cluster.cli(o.cluster.nodes[1].url(), "policy", "edit", p.Name, "--vm", vmA, "--vm", vmB, "--vm", vmC); err != nil {
			t.Fatal(err)
		}
		np, err := o.cl.GetPolicy(ctx, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(np.VMs) != 3 {
			t.Fatalf("policy after edit has VMs %+v", np.VMs)
		}
		*p = *np
		o.waitSyncing(p, 2*time.Minute)
		o.checkReplicas(p)
		disks, err := o.vmDisks(vmC)
		if err != nil || len(disks.Disks) == 0 {
			t.Fatalf("disks of %s: %v %+v", vmC, err, disks)
		}
		o.writeNBD(disks.Disks[0].NBDURI, "write -P 0x3c 4k 12k")
		o.latestRestoresEqual(vmC, disks.Disks[0], 90*time.Second)
	})

	o.t = t
	t.Run("vMotion", func(t *testing.T) {
		o.t = t
		tk, err := o.task(p, vmA)
		if err != nil {
			t.Fatal(err)
		}
		from := tk.SourceHost[strings.LastIndexByte(tk.SourceHost, '/')+1:]
		vm, err := f.VirtualMachine(ctx, vmA)
		if err != nil {
			t.Fatal(err)
		}
		var dest *object.HostSystem
		for i := range 2 {
			h, err := f.HostSystem(ctx, vcsim.SourceHostName(i))
			if err != nil {
				t.Fatal(err)
			}
			if h.Reference().Value != from {
				dest = h
			}
		}
		if dest == nil {
			t.Fatalf("no other source host than %s", from)
		}
		ref := dest.Reference()
		task, err := vm.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &ref}, types.VirtualMachineMovePriorityDefaultPriority)
		if err == nil {
			err = task.Wait(ctx)
		}
		if err != nil {
			t.Fatalf("migrate %s to %s: %v", vmA, dest.Name(), err)
		}
		destNBD := o.nbd[dest.Name()]
		var disks client.VMDisks
		o.eventually("the data path re-planned to the new host", 60*time.Second, func() error {
			tk, err := o.task(p, vmA)
			if err != nil {
				return err
			}
			if !strings.HasSuffix(tk.SourceHost, "/"+ref.Value) {
				return fmt.Errorf("source host %s, want %s (%s: %s)", tk.SourceHost, ref.Value, tk.Status, tk.Reason)
			}
			if tk.Status != model.StatusSyncing && tk.Status != model.StatusWarning {
				return fmt.Errorf("%s: %s", tk.Status, tk.Reason)
			}
			if disks, err = o.vmDisks(vmA); err != nil {
				return err
			}
			for _, d := range disks.Disks {
				if !strings.Contains(d.NBDURI, destNBD) {
					return fmt.Errorf("disk %d served at %s, not by the filter of %s (%s)", d.Key, d.NBDURI, dest.Name(), destNBD)
				}
			}
			return nil
		})
		d := disks.Disks[0]
		o.writeNBD(d.NBDURI, "write -P 0x77 256k 32k")
		o.latestRestoresEqual(vmA, d, 90*time.Second)
	})
}
