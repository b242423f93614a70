package appliance

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// The demo policy: a short RPO so that points show up at once, a day of
// short-term points, a long-term point every hour.
const (
	labDemoPolicy  = "demo"
	labDiskSizesMB = "64,128,256" // the demo VMs' disks, cycled: a quick initial sync
)

func demoPolicySpec(vcID string, vms []string) *model.Policy {
	p := &model.Policy{
		Name:               labDemoPolicy,
		Description:        "the lab's demo VMs",
		Enabled:            true,
		VCenterID:          vcID,
		Target:             model.Target{VCenterID: vcID, Cluster: labTargetCluster, Datastore: labTargetDatastore},
		RPO:                model.Duration(2 * time.Second),
		ShortTermRetention: model.Duration(time.Hour),
		LongTermEvery:      model.Duration(time.Hour),
		LongTermRetention:  model.Duration(24 * time.Hour),
		ProxySelection:     model.SelectAuto,
	}
	for _, vm := range vms {
		p.VMs = append(p.VMs, model.VMRef{Name: vm})
	}
	return p
}

// ensureDemoPolicy creates the demo policy unless it exists (a restarted
// lab keeps the one it had, with whatever the user changed).
func ensureDemoPolicy(ctx context.Context, cl *client.Client, vcID string, vms []string) (*model.Policy, error) {
	if p, err := cl.GetPolicy(ctx, labDemoPolicy); err == nil {
		return p, nil
	} else if !errors.Is(err, model.ErrNotFound) {
		return nil, fmt.Errorf("look up the demo policy: %w", err)
	}
	if len(vms) == 0 {
		return nil, errors.New("create the demo policy: the lab vCenter has no demo VMs")
	}
	p, err := cl.CreatePolicy(ctx, demoPolicySpec(vcID, vms))
	if err != nil {
		return nil, fmt.Errorf("create the demo policy: %w", err)
	}
	return p, nil
}

// installLabFilter installs the I/O filter on the lab's clusters (and with
// it the CDP storage policy): a policy protects VMs only between clusters
// that have the filter. It asks even when the records say installed: the
// simulator of a restarted lab starts without it.
func installLabFilter(ctx context.Context, cl *client.Client, vcID string, inv *labInventory, log *slog.Logger) error {
	names := make([]string, 0, len(inv.Clusters))
	for n := range inv.Clusters {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := cl.InstallFilter(ctx, client.FilterInstallRequest{VCenterID: vcID, Cluster: n}); err != nil {
			return fmt.Errorf("install the filter on cluster %s: %w", n, err)
		}
		log.Info("filter installed", "cluster", n)
	}
	return nil
}

// labView is one poll of the demo policy.
type labView struct {
	At      time.Time
	Policy  *model.Policy
	Status  *client.PolicyStatus
	Proxies map[string]*model.Proxy // by ID
	Hosts   map[string]*model.Host  // by ID and by MoRef
	// NoLeader: the coordinator asked has no leader (no quorum), so the
	// statuses stand still while the data path runs on.
	NoLeader bool
	Err      error
}

// task returns the task of the VM named vm, if any.
func (v *labView) task(vm string) *model.VMTask {
	if v == nil || v.Status == nil {
		return nil
	}
	for _, t := range v.Status.Tasks {
		if t.VMName == vm || t.VMMoRef == vm {
			return t
		}
	}
	return nil
}

// labObserver polls the demo policy's status for the table and the
// workload.
type labObserver struct {
	clients  []*client.Client // one per coordinator
	cur      int              // the one asked now; the next after a failure
	policy   string
	view     atomic.Pointer[labView]
	workload *labWorkload
}

func newLabObserver(cl *client.Client, policy string) *labObserver {
	o := &labObserver{policy: policy}
	for _, ep := range cl.Endpoints() {
		// Reads from the node asked: a table that keeps showing what a
		// coordinator without quorum knows beats an empty one.
		c := cl.WithEndpoints([]string{ep})
		c.Stale, c.RetryFor = true, 0
		o.clients = append(o.clients, c)
	}
	return o
}

func (o *labObserver) poll(ctx context.Context) *labView {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	v := &labView{At: time.Now(), Proxies: map[string]*model.Proxy{}, Hosts: map[string]*model.Host{}}
	c := o.clients[o.cur]
	defer func() {
		if v.Err != nil {
			o.cur = (o.cur + 1) % len(o.clients)
		}
	}()
	if st, err := c.ClusterStatus(ctx); err == nil {
		v.NoLeader = st.LeaderID == ""
	}
	if v.Policy, v.Err = c.GetPolicy(ctx, o.policy); v.Err != nil {
		return v
	}
	if v.Status, v.Err = c.PolicyStatus(ctx, v.Policy.ID); v.Err != nil {
		return v
	}
	if ps, err := c.ListProxies(ctx); err == nil {
		for _, p := range ps {
			v.Proxies[p.ID] = p
		}
	}
	if hs, err := c.ListHosts(ctx); err == nil {
		for _, h := range hs {
			v.Hosts[h.ID], v.Hosts[h.MoRef] = h, h
		}
	}
	return v
}

func (o *labObserver) run(ctx context.Context, every time.Duration) {
	for {
		v := o.poll(ctx)
		if prev := o.view.Load(); v.Err != nil && prev != nil && prev.Status != nil {
			// Keep the last good view, marked with the error.
			c := *prev
			c.Err = v.Err
			v = &c
		}
		o.view.Store(v)
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
	}
}

// table prints the view every interval; on a terminal it redraws in
// place, under banner (what the cleared "lab ready" message said).
func (o *labObserver) table(ctx context.Context, out io.Writer, every time.Duration, banner string) {
	redraw := false
	if f, ok := out.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			redraw = true
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(every):
		}
		v := o.view.Load()
		if v == nil {
			continue
		}
		if redraw {
			fmt.Fprint(out, "\033[H\033[2J"+banner+"\n\n")
		}
		var wr labWorkloadStats
		if o.workload != nil {
			wr = o.workload.stats()
		}
		renderLabTable(out, v, wr, time.Now())
	}
}

// renderLabTable writes one table: a line for the policy, then one per VM.
func renderLabTable(out io.Writer, v *labView, wr labWorkloadStats, now time.Time) {
	if v.Policy == nil || v.Status == nil {
		fmt.Fprintf(out, "%s  policy %s: %v\n\n", now.Format("15:04:05"), labDemoPolicy, v.Err)
		return
	}
	head := fmt.Sprintf("%s  policy %s: %s", now.Format("15:04:05"), v.Policy.Name, v.Status.Status)
	if v.Status.Reason != "" {
		head += " (" + v.Status.Reason + ")"
	}
	if v.Err != nil {
		head += fmt.Sprintf("  [coordinators not answering, as of %s: %v]", v.At.Format("15:04:05"), v.Err)
	} else if v.NoLeader {
		head += "  [no coordinator quorum: statuses frozen, filters and proxies run on their last configuration]"
	}
	fmt.Fprintln(out, head)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tSTATUS\tSYNC\tRPO\tLAG\tLAST POINT\tSOURCE PROXY\tTARGET PROXY")
	tasks := append([]*model.VMTask(nil), v.Status.Tasks...)
	sort.Slice(tasks, func(i, j int) bool { return tasks[i].VMName < tasks[j].VMName })
	for _, t := range tasks {
		syncPct := "-"
		if t.SyncTotalBytes > 0 {
			syncPct = strconv.Itoa(int(100*t.SyncDoneBytes/t.SyncTotalBytes)) + "%"
		} else if t.Status == model.StatusSyncing || t.Status == model.StatusWarning || !t.LastPointAt.IsZero() {
			syncPct = "100%"
		}
		lag, last := "-", "-"
		if t.LagSeconds > 0 || !t.LastPointAt.IsZero() {
			lag = fmt.Sprintf("%.1fs", t.LagSeconds)
		}
		if !t.LastPointAt.IsZero() {
			last = fmt.Sprintf("%s (%s ago)", t.LastPointAt.Local().Format("15:04:05"), now.Sub(t.LastPointAt).Round(time.Second))
		}
		status := string(t.Status)
		if t.Reason != "" && t.Status != model.StatusSyncing {
			status += ": " + t.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.VMName, status, syncPct, v.Policy.RPO, lag, last,
			proxyLabel(v.Proxies, t.SourceProxy), proxyLabel(v.Proxies, t.TargetProxy))
	}
	tw.Flush()
	if wr.Writes > 0 || wr.Errors > 0 {
		fmt.Fprintf(out, "workload: %d writes, %.1f MiB", wr.Writes, float64(wr.Bytes)/(1<<20))
		if wr.Errors > 0 {
			fmt.Fprintf(out, ", %d failed (last: %s)", wr.Errors, wr.LastErr)
		}
		fmt.Fprintln(out)
	}
	fmt.Fprintln(out)
}

// proxyLabel names a proxy with its kind and, for a VM proxy, its cluster.
func proxyLabel(ps map[string]*model.Proxy, id string) string {
	if id == "" {
		return "-"
	}
	p := ps[id]
	if p == nil {
		return id
	}
	if p.Kind == model.KindPhysical {
		return p.Name + " (physical)"
	}
	return p.Name + " (vm)"
}

// labWorkload writes random blocks to the demo VMs' disks through their
// filters' NBD exports, at a steady modest rate.
type labWorkload struct {
	obs   *labObserver
	comps *labComponents
	log   *slog.Logger

	writes, bytes, errs atomic.Int64
	mu                  sync.Mutex
	lastErr             string
}

type labWorkloadStats struct {
	Writes, Bytes, Errors int64
	LastErr               string
}

func (w *labWorkload) stats() labWorkloadStats {
	w.mu.Lock()
	defer w.mu.Unlock()
	return labWorkloadStats{Writes: w.writes.Load(), Bytes: w.bytes.Load(), Errors: w.errs.Load(), LastErr: w.lastErr}
}

func (w *labWorkload) fail(err error) {
	w.errs.Add(1)
	w.mu.Lock()
	w.lastErr = err.Error()
	w.mu.Unlock()
}

// labWriteEvery is the period of the workload's writes to each VM.
const labWriteEvery = 250 * time.Millisecond

// nbdAddr is where the VM's disks are served: its source host's filter.
func (w *labWorkload) nbdAddr(v *labView, t *model.VMTask) string {
	if h := v.Hosts[t.SourceHost]; h != nil && h.FilterNBD != "" {
		return h.FilterNBD
	}
	return w.comps.nbdFor(t.SourceHost)
}

// runVM keeps writing to one VM's disks until ctx ends: it (re)connects
// whenever the VM's disks or host change, or a connection fails.
func (w *labWorkload) runVM(ctx context.Context, vm string) {
	rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	var conns []*nbdClient
	var connKey string
	closeAll := func() {
		for _, c := range conns {
			c.Close()
		}
		conns, connKey = nil, ""
	}
	defer closeAll()
	buf := make([]byte, 64<<10)
	tick := time.NewTicker(labWriteEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		v := w.obs.view.Load()
		t := v.task(vm)
		if t == nil || t.SourceHost == "" || len(t.Disks) == 0 {
			continue
		}
		addr := w.nbdAddr(v, t)
		if addr == "" {
			continue
		}
		key := addr
		for _, d := range t.Disks {
			key += "," + strconv.Itoa(int(d.Key))
		}
		if key != connKey {
			closeAll()
			for _, d := range t.Disks {
				c, err := dialNBD(ctx, addr, vm+"/"+strconv.Itoa(int(d.Key)))
				if err != nil {
					// Not served yet (the filter has not had the VM's
					// configuration): try again at the next tick.
					if !errors.Is(err, errNBDExport) {
						w.fail(err)
					}
					closeAll()
					break
				}
				conns = append(conns, c)
			}
			if len(conns) == 0 {
				continue
			}
			connKey = key
		}
		c := conns[rng.IntN(len(conns))]
		n := (1 + rng.IntN(16)) * 4096
		if int64(n) > c.Size() {
			n = int(c.Size())
		}
		off := rng.Int64N(c.Size()/4096-int64(n/4096)+1) * 4096
		p := buf[:n]
		for i := 0; i < n; i += 8 {
			v := rng.Uint64()
			for j := 0; j < 8 && i+j < n; j++ {
				p[i+j] = byte(v >> (8 * j))
			}
		}
		if err := c.WriteAt(p, off); err != nil {
			w.fail(fmt.Errorf("write to %s: %w", vm, err))
			closeAll()
			continue
		}
		w.writes.Add(1)
		w.bytes.Add(int64(n))
	}
}
