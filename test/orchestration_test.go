package test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/object"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vcsim"
	"github.com/continuum-cdp/continuum/vsphere"
)

// orchestra is a whole product of real processes: a simulated vCenter,
// three coordinators, a source and a target proxy and one managed filter
// per simulated host.
type orchestra struct {
	t       *testing.T
	root    string
	cluster *coordCluster
	cl      *client.Client
	vc      *model.VCenter
	vcURL   string
	profile string
	procs   map[string]*managedProc
	proxies map[string]*model.Proxy
	nbd     map[string]string // host name -> NBD address of its filter
}

// managedModes says why real-process orchestration cannot run with this
// build, or "".
func managedModes(t *testing.T) string {
	for _, role := range []string{"filter", "proxy"} {
		out, err := exec.Command(continuumBinary(t), role, "--help").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "--coordinator") || !strings.Contains(string(out), "--state-dir") {
			return "`continuum " + role + "` has no managed mode (--coordinator, --state-dir) in this build"
		}
	}
	return ""
}

// startOrchVcsim runs `continuum vcsim` with two source hosts sharing the
// source datastore, one target host, vms protected VMs of one small disk.
func startOrchVcsim(t *testing.T, root string, vms int) map[string]string {
	t.Helper()
	return startVcsimArgs(t, root, 90*time.Second, "--source-hosts", "2", "--target-hosts", "1", "--source-datastores", "1",
		"--target-datastores", "1", "--vms", fmt.Sprint(vms), "--proxy-vms", "-1", "--disk-sizes-mb", "1")
}

func startOrchestra(t *testing.T, vms int) *orchestra {
	t.Helper()
	return startProduct(t, vms, productOptions{what: "orchestration", sourceProxies: []string{"src"}, maxTasks: 1000, alive: 10 * time.Second})
}

// productOptions shapes the product startProduct runs.
type productOptions struct {
	what          string   // the test's subject, for a skip message
	coordArgs     []string // extra flags of every coordinator
	sourceProxies []string // names of the physical source proxies; the target proxy is "dst"
	maxTasks      int      // of every proxy
	alive         time.Duration
}

// startProduct starts 3 coordinators, a vCenter simulator with two source
// hosts and one target host, the physical proxies and a managed filter per
// host as real processes, and waits until every component heartbeats.
func startProduct(t *testing.T, vms int, po productOptions) *orchestra {
	t.Helper()
	if testing.Short() {
		t.Skip("starts real processes")
	}
	if why := managedModes(t); why != "" {
		t.Skip(po.what + " needs the managed filter and proxy: " + why)
	}
	o := &orchestra{t: t, procs: map[string]*managedProc{}, proxies: map[string]*model.Proxy{}, nbd: map[string]string{}}
	o.cluster = startCoordClusterArgs(t, po.coordArgs...)
	o.root = o.cluster.root
	env := startOrchVcsim(t, o.root, vms)
	o.vcURL = env["GOVC_URL"]
	var urls []string
	for _, n := range o.cluster.nodes {
		urls = append(urls, n.url())
	}
	cl, err := client.New(strings.Join(urls, ","), o.cluster.token, o.cluster.ca)
	if err != nil {
		t.Fatal(err)
	}
	cl.RetryFor = 30 * time.Second
	t.Cleanup(cl.Close)
	o.cl = cl
	ctx := context.Background()
	if o.vc, err = cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: o.vcURL, Username: env["GOVC_USERNAME"],
		Password: env["GOVC_PASSWORD"], Insecure: true}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{vcsim.SourceClusterName, vcsim.TargetClusterName} {
		out, err := o.cluster.cli(urls[1], "filter", "install", "--cluster", c, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var rec model.Cluster
		if err := json.Unmarshal([]byte(out), &rec); err != nil || rec.StorageProfileID == "" {
			t.Fatalf("filter install on %s: %v\n%s", c, err, out)
		}
		o.profile = rec.StorageProfileID
	}
	ctok, err := cl.CreateToken(ctx, model.TokenComponent)
	if err != nil {
		t.Fatal(err)
	}
	common := func(name string) []string {
		return []string{"--coordinator", strings.Join(urls, ","), "--token", ctok.Token, "--cacert", o.cluster.caPath,
			"--state-dir", filepath.Join(o.root, "state", name)}
	}
	type proxySpec struct {
		name string
		role model.ProxyRole
	}
	var specs []proxySpec
	for _, name := range po.sourceProxies {
		specs = append(specs, proxySpec{name, model.RoleSource})
	}
	for _, spec := range append(specs, proxySpec{"dst", model.RoleTarget}) {
		listen, admin := coordFreeAddr(t), coordFreeAddr(t)
		px, err := cl.CreateProxy(ctx, &model.Proxy{Name: spec.name, Role: spec.role, Kind: model.KindPhysical, Address: listen, MaxTasks: po.maxTasks})
		if err != nil {
			t.Fatal(err)
		}
		o.proxies[spec.name] = px
		o.launch("proxy-"+spec.name, append(append([]string{"proxy"}, common("proxy-"+spec.name)...),
			"--proxy-id", px.ID, "--listen", listen, "--admin-addr", admin))
	}
	srcDS, dstDS := filepath.Join(o.root, "datastores", "source"), filepath.Join(o.root, "datastores", "target")
	for _, d := range []string{srcDS, dstDS} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hosts := []string{vcsim.SourceHostName(0), vcsim.SourceHostName(1), vcsim.TargetHostName(0)}
	for i, h := range hosts {
		ds := srcDS
		if i == 2 {
			ds = dstDS
		}
		nbd := coordFreeAddr(t)
		o.nbd[h] = nbd
		o.launch("filter-"+h, append(append([]string{"filter"}, common("filter-"+h)...),
			"--host", h, "--vcenter-id", o.vc.ID, "--datastore", ds, "--journal-dir", filepath.Join(o.root, "journals", h),
			"--listen", coordFreeAddr(t), "--nbd-addr", nbd, "--admin-addr", coordFreeAddr(t)))
	}
	// Every component reports to the coordinators.
	o.eventually("every component heartbeating", 60*time.Second, func() error {
		hs, err := cl.ListHosts(ctx)
		if err != nil {
			return err
		}
		alive := 0
		for _, h := range hs {
			if time.Since(h.LastHeartbeat) < po.alive && h.FilterAdmin != "" && h.FilterNBD != "" {
				alive++
			}
		}
		pxs, err := cl.ListProxies(ctx)
		if err != nil {
			return err
		}
		for _, p := range pxs {
			if time.Since(p.LastHeartbeat) < po.alive {
				alive++
			}
		}
		if want := len(hosts) + len(po.sourceProxies) + 1; alive != want {
			return fmt.Errorf("%d of %d components heartbeating", alive, want)
		}
		return nil
	})
	return o
}

func (o *orchestra) launch(name string, args []string) {
	p := &managedProc{t: o.t, name: name, log: filepath.Join(o.root, name+".log"), args: args}
	p.start()
	o.t.Cleanup(p.kill)
	o.procs[name] = p
}

// eventually polls cond until it holds or d passes; the failure shows the
// components' logs.
func (o *orchestra) eventually(what string, d time.Duration, cond func() error) {
	o.t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	var logs strings.Builder
	names := make([]string, 0, len(o.procs))
	for n := range o.procs {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(&logs, "--- %s\n%s\n", n, o.procs[n].logTail())
	}
	for _, n := range o.cluster.nodes {
		fmt.Fprintf(&logs, "--- %s\n%s\n", n.id, n.logTail())
	}
	o.t.Fatalf("%s: %v\n%s", what, err, logs.String())
}

func (o *orchestra) policy(name string, vms []string, longTermEvery time.Duration) *model.Policy {
	o.t.Helper()
	p := &model.Policy{Name: name, VCenterID: o.vc.ID, Enabled: true,
		Target: model.Target{VCenterID: o.vc.ID, Cluster: vcsim.TargetClusterName, Datastore: vcsim.TargetDatastoreName(0)},
		RPO:    model.Duration(2 * time.Second), ShortTermRetention: model.Duration(time.Hour)}
	if longTermEvery > 0 {
		p.LongTermEvery, p.LongTermRetention = model.Duration(longTermEvery), model.Duration(time.Hour)
	}
	for _, vm := range vms {
		p.VMs = append(p.VMs, model.VMRef{Name: vm})
	}
	got, err := o.cl.CreatePolicy(context.Background(), p)
	if err != nil {
		o.t.Fatal(err)
	}
	return got
}

// waitSyncing waits until every VM of the policy finished its initial
// sync.
func (o *orchestra) waitSyncing(p *model.Policy, d time.Duration) *client.PolicyStatus {
	o.t.Helper()
	var st *client.PolicyStatus
	o.eventually("policy "+p.Name+" syncing", d, func() error {
		var err error
		if st, err = o.cl.PolicyStatus(context.Background(), p.ID); err != nil {
			return err
		}
		if len(st.Tasks) != len(p.VMs) {
			return fmt.Errorf("%d tasks for %d VMs (%s: %s)", len(st.Tasks), len(p.VMs), st.Status, st.Reason)
		}
		n := 0
		var last string
		for _, tk := range st.Tasks {
			switch tk.Status {
			case model.StatusSyncing, model.StatusWarning:
				n++
			default:
				last = fmt.Sprintf("%s: %s %s", tk.VMName, tk.Status, tk.Reason)
			}
		}
		if n != len(st.Tasks) {
			return fmt.Errorf("%d of %d VMs syncing; e.g. %s", n, len(st.Tasks), last)
		}
		return nil
	})
	return st
}

// checkReplicas asks vCenter: one replica per source VM of the policy,
// with the source's disk capacities, and the CDP profile on every source
// disk.
// inventory reads the lab vCenter's inventory.
func (o *orchestra) inventory() *vsphere.Inventory {
	o.t.Helper()
	ctx := context.Background()
	c, err := vsphere.Connect(ctx, vsphere.Config{URL: o.vcURL, Username: vcsim.Username, Password: vcsim.Password, Insecure: true})
	if err != nil {
		o.t.Fatal(err)
	}
	defer c.Close(ctx)
	inv, err := c.Inventory(ctx)
	if err != nil {
		o.t.Fatal(err)
	}
	return inv
}

// replicaVMs counts the replica VMs of a policy in vCenter.
func (o *orchestra) replicaVMs(policyID string) int {
	o.t.Helper()
	n := 0
	for _, vm := range o.inventory().VMs {
		if vm.Replica != nil && vm.Replica.PolicyID == policyID {
			n++
		}
	}
	return n
}

func (o *orchestra) checkReplicas(p *model.Policy) {
	o.t.Helper()
	inv := o.inventory()
	replicas := map[string][]vsphere.VM{}
	for _, vm := range inv.VMs {
		if vm.Replica != nil && vm.Replica.PolicyID == p.ID {
			replicas[vm.Replica.SourceInstanceUUID] = append(replicas[vm.Replica.SourceInstanceUUID], vm)
		}
	}
	for _, ref := range p.VMs {
		src := inv.VMByName(ref.Name)
		if src == nil {
			o.t.Fatalf("source VM %s not found", ref.Name)
		}
		reps := replicas[src.InstanceUUID]
		if len(reps) != 1 {
			o.t.Fatalf("%s has %d replicas, want exactly 1", src.Name, len(reps))
		}
		rep := reps[0]
		o.t.Logf("%s: replica %s with %d disk(s)", src.Name, rep.Name, len(rep.Disks))
		if len(rep.Disks) != len(src.Disks) {
			o.t.Fatalf("replica of %s has %d disks, source %d", src.Name, len(rep.Disks), len(src.Disks))
		}
		for _, d := range src.Disks {
			rd := rep.Disk(d.Key)
			if rd == nil || rd.CapacityBytes != d.CapacityBytes {
				o.t.Fatalf("replica of %s disk %d: %+v, source %d bytes", src.Name, d.Key, rd, d.CapacityBytes)
			}
			if d.ProfileID != o.profile {
				o.t.Fatalf("source disk %d of %s has profile %q, want the CDP profile %q", d.Key, src.Name, d.ProfileID, o.profile)
			}
		}
	}
}

// TestOrchestration: coordinators, vCenter, proxies and filters as real
// processes. A policy gets replicas of equal disks, the CDP profile on the
// source disks and data flowing: writes through the filter's NBD export
// restore equal from the latest point, through the coordinator. A leader
// killed while a second policy is being configured leaves no duplicate
// replica and the configuration completes.
func TestOrchestration(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	o := startOrchestra(t, 4)
	ctx := context.Background()
	api := o.cluster.nodes[0].url()

	vms := []string{vcsim.ProtectedVMName(0), vcsim.ProtectedVMName(1)}
	p := o.policy("gold", vms, 4*time.Second)
	o.waitSyncing(p, 3*time.Minute)
	o.checkReplicas(p)

	// Writes through NBD, then the latest point restores equal.
	for i, vm := range vms {
		out, err := o.cluster.cli(api, "vm", "disks", vm, "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var disks client.VMDisks
		if err := json.Unmarshal([]byte(out), &disks); err != nil || len(disks.Disks) == 0 {
			t.Fatalf("vm disks %s: %v\n%s", vm, err, out)
		}
		for _, d := range disks.Disks {
			if !strings.HasPrefix(d.NBDURI, "nbd://") {
				t.Fatalf("%s disk %d has no NBD URI: %+v", vm, d.Key, d)
			}
			run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x 0 64k", 0x41+i), "-c", "write -P 0x7e 512k 4k",
				"-c", "flush", d.NBDURI)
			src := filepath.Join(o.root, fmt.Sprintf("source-%s-%d.raw", vm, d.Key))
			run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", d.NBDURI, src)
			img := filepath.Join(o.root, fmt.Sprintf("restored-%s-%d.raw", vm, d.Key))
			o.eventually(fmt.Sprintf("latest point of %s disk %d equal to the source", vm, d.Key), 60*time.Second, func() error {
				out, err := o.cluster.cli(api, "restore-point", "list", vm, "-o", "json")
				if err != nil {
					return err
				}
				var pts []client.RestorePointInfo
				if err := json.Unmarshal([]byte(out), &pts); err != nil || len(pts) == 0 {
					return fmt.Errorf("points of %s: %v %s", vm, err, out)
				}
				last := pts[len(pts)-1].ID
				if _, err := o.cluster.cli(api, "restore-point", "export", vm, "--disk", fmt.Sprint(d.Key),
					"--point", fmt.Sprint(last), "--out", img); err != nil {
					return err
				}
				if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, src).CombinedOutput(); err != nil {
					return fmt.Errorf("point %d differs: %v %s", last, err, out)
				}
				t.Logf("%s disk %d (%s): point %d of %d restores equal to the source", vm, d.Key, d.NBDURI, last, len(pts))
				return nil
			})
		}
	}

	// The leader's scheduler asks the target filter for long-term points.
	longTerm := func(vm string) (int, error) {
		pts, err := o.cl.RestorePoints(ctx, vm)
		n := 0
		for _, p := range pts {
			if p.Kind == model.PointLongTerm {
				n++
			}
		}
		return n, err
	}
	lt0, err := longTerm(vms[0])
	if err != nil {
		t.Fatal(err)
	}
	disks, err := o.cl.VMDisks(ctx, vms[0])
	if err != nil {
		t.Fatal(err)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x33 128k 8k", "-c", "flush", disks.Disks[0].NBDURI)
	o.eventually("a scheduled long-term point", 60*time.Second, func() error {
		n, err := longTerm(vms[0])
		if err == nil && n <= lt0 {
			err = fmt.Errorf("%d long-term points, %d before", n, lt0)
		}
		return err
	})

	// The leader dies while a second policy is being configured: once the
	// first of its replicas is recorded.
	p2 := o.policy("silver", []string{vcsim.ProtectedVMName(2), vcsim.ProtectedVMName(3)}, 0)
	synced := 0
	o.eventually("a replica of the second policy recorded", 60*time.Second, func() error {
		st, err := o.cl.PolicyStatus(ctx, p2.ID)
		if err != nil {
			return err
		}
		for _, tk := range st.Tasks {
			if tk.ReplicaID != "" {
				synced = 0
				for _, tk := range st.Tasks {
					if tk.Status == model.StatusSyncing {
						synced++
					}
				}
				return nil
			}
		}
		return fmt.Errorf("no replica yet (%s %s)", st.Status, st.Reason)
	})
	st := o.cluster.status(api)
	var leader *coordNode
	for _, n := range o.cluster.nodes {
		if n.id == st.LeaderID {
			leader = n
		}
	}
	if leader == nil {
		t.Fatalf("no leader in %+v", st)
	}
	leader.kill()
	t.Logf("killed leader %s while policy %s was being configured (%d of %d VMs syncing)", leader.id, p2.Name, synced, len(p2.VMs))
	var alive []string
	for _, n := range o.cluster.nodes {
		if n != leader {
			alive = append(alive, n.url())
		}
	}
	o.cl = o.cl.WithEndpoints(alive)
	o.waitSyncing(p2, 3*time.Minute)
	o.checkReplicas(p2)
	o.checkReplicas(p)
	if st, err := o.cl.PolicyStatus(ctx, p.ID); err != nil || len(st.Tasks) != 2 {
		t.Fatalf("first policy after the leader change: %+v %v", st, err)
	}
}

// TestOrchestration200VMs: a policy of 200 VMs with small disks reaches
// Syncing with one replica each.
func TestOrchestration200VMs(t *testing.T) {
	const n = 200
	o := startOrchestra(t, n)
	var vms []string
	for i := range n {
		vms = append(vms, vcsim.ProtectedVMName(i))
	}
	p := o.policy("fleet", vms, 0)
	o.waitSyncing(p, 8*time.Minute)
	o.checkReplicas(p)
}

// relocate moves a VM to another host through vCenter (a vMotion).
func (o *orchestra) relocate(vm, host string) {
	o.t.Helper()
	ctx := context.Background()
	u, err := soap.ParseURL(o.vcURL)
	if err != nil {
		o.t.Fatal(err)
	}
	u.User = url.UserPassword(vcsim.Username, vcsim.Password)
	gc, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		o.t.Fatal(err)
	}
	defer gc.Logout(ctx)
	vmo := object.NewVirtualMachine(gc.Client, types.ManagedObjectReference{Type: "VirtualMachine", Value: vm})
	hr := types.ManagedObjectReference{Type: "HostSystem", Value: host}
	task, err := vmo.Relocate(ctx, types.VirtualMachineRelocateSpec{Host: &hr}, types.VirtualMachineMovePriorityDefaultPriority)
	if err == nil {
		err = task.Wait(ctx)
	}
	if err != nil {
		o.t.Fatalf("relocate %s to %s: %v", vm, host, err)
	}
}

// checkLatestEqual writes through every disk's NBD export, then waits until
// the latest restore point, exported through the coordinator, equals the
// disk as the filter serves it.
func (o *orchestra) checkLatestEqual(vm string, pattern byte) {
	o.t.Helper()
	api := o.cl.Endpoints()[0]
	out, err := o.cluster.cli(api, "vm", "disks", vm, "-o", "json")
	if err != nil {
		o.t.Fatal(err)
	}
	var disks client.VMDisks
	if err := json.Unmarshal([]byte(out), &disks); err != nil || len(disks.Disks) == 0 {
		o.t.Fatalf("vm disks %s: %v\n%s", vm, err, out)
	}
	for _, d := range disks.Disks {
		// A filter serves a VM's disks once its configuration names the VM:
		// within a heartbeat of a re-plan.
		o.eventually("write through "+d.NBDURI, 30*time.Second, func() error {
			out, err := exec.Command("qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x%02x 192k 16k", pattern), "-c", "flush", d.NBDURI).CombinedOutput()
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			return nil
		})
		src := filepath.Join(o.root, fmt.Sprintf("source-%s-%d-%02x.raw", vm, d.Key, pattern))
		run(o.t, "qemu-img", "convert", "-f", "raw", "-O", "raw", d.NBDURI, src)
		img := filepath.Join(o.root, fmt.Sprintf("restored-%s-%d-%02x.raw", vm, d.Key, pattern))
		o.eventually(fmt.Sprintf("latest point of %s disk %d equal to the source", vm, d.Key), 60*time.Second, func() error {
			pts, err := o.cl.RestorePoints(context.Background(), vm)
			if err != nil || len(pts) == 0 {
				return fmt.Errorf("points of %s: %v", vm, err)
			}
			last := pts[len(pts)-1].ID
			if _, err := o.cl.ExportRestorePoint(context.Background(), vm, d.Key, last, img); err != nil {
				return err
			}
			if out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, src).CombinedOutput(); err != nil {
				return fmt.Errorf("point %d differs: %v %s", last, err, out)
			}
			return nil
		})
	}
}

// TestOrchestrationVMotion: a protected VM moved to the other source host
// is re-planned: the new host's filter takes it over from the shared
// datastore, writes through its NBD export reach the replica, and the
// latest point restores equal.
func TestOrchestrationVMotion(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	o := startOrchestra(t, 1)
	ctx := context.Background()
	vm := vcsim.ProtectedVMName(0)
	p := o.policy("moving", []string{vm}, 0)
	st := o.waitSyncing(p, 3*time.Minute)
	o.checkLatestEqual(vm, 0x11)

	from := st.Tasks[0].SourceHost
	hosts, err := o.cl.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var to *model.Host
	for _, h := range hosts {
		if h.ID != from && strings.HasPrefix(h.Name, "src-") {
			to = h
		}
	}
	if to == nil {
		t.Fatalf("no other source host among %+v", hosts)
	}
	o.relocate(st.Tasks[0].VMMoRef, to.MoRef)
	o.eventually("the task re-planned on "+to.Name, 60*time.Second, func() error {
		st, err := o.cl.PolicyStatus(ctx, p.ID)
		if err != nil {
			return err
		}
		tk := st.Tasks[0]
		if tk.SourceHost != to.ID || (tk.Status != model.StatusSyncing && tk.Status != model.StatusWarning) {
			return fmt.Errorf("task on %s: %s %s", tk.SourceHost, tk.Status, tk.Reason)
		}
		return nil
	})
	disks, err := o.cl.VMDisks(ctx, vm)
	if err != nil || !strings.Contains(disks.Disks[0].NBDURI, to.FilterNBD) {
		t.Fatalf("disks after the move: %+v %v (want the NBD export of %s at %s)", disks, err, to.Name, to.FilterNBD)
	}
	o.checkLatestEqual(vm, 0x22)
}
