package appliance

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/netutil"
)

// LabOptions configure "continuum lab".
type LabOptions struct {
	Dir        string
	Nodes      int
	NoDemo     bool
	NoWorkload bool
	NoTable    bool // no live table on Out
	WithVcsim  bool // start "continuum vcsim" first
	// VMs and DiskSizesMB, when set, size the simulator's source VMs
	// (benchmarks run the lab with many small VMs).
	VMs         int
	DiskSizesMB string
	Exe         string
	Out         io.Writer
	Logger      *slog.Logger
}

// labProc is one supervised child process.
type labProc struct {
	name  string
	args  []string
	log   string
	ready string   // line on stdout that says it is ready ("" for none)
	env   []string // added to the lab's environment
	// tier orders the stop: higher tiers stop first, so that the data path
	// goes before the coordinators that configure it, and those before
	// the vCenter they hold sessions to.
	tier int

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	started time.Time
}

func freeLoopbackAddr() (string, error) { return netutil.FreeLoopbackAddr() }

// start runs the process once, its output appended to its log file. When
// ready is set, readyCh is closed on the first stdout line containing it.
func (p *labProc) start(exe string, readyCh chan<- struct{}) error {
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log of %s: %w", p.name, err)
	}
	cmd := exec.Command(exe, p.args...)
	cmd.Stderr = f
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	// Own process group so that stopping the lab reaches grandchildren;
	// Pdeathsig so a killed lab leaves no orphans behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		f.Close()
		return err
	}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.started = cmd, done, time.Now()
	p.mu.Unlock()
	go func() {
		sc := bufio.NewScanner(stdout)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(f, line)
			if !signalled && p.ready != "" && readyCh != nil && strings.Contains(line, p.ready) {
				close(readyCh)
				signalled = true
			}
		}
		_ = cmd.Wait()
		f.Close()
		close(done)
	}()
	return nil
}

// stop sends SIGTERM to the process group, then SIGKILL after grace; it
// reports whether SIGKILL was needed.
func (p *labProc) stop(grace time.Duration) (killed bool) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return false
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
		return false
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return true
	}
}

func (p *labProc) startedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started
}

func (p *labProc) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// parseEnvFile reads "export K=V" lines (V optionally quoted).
func parseEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "export "))
		k, v, ok := strings.Cut(line, "=")
		if !ok || k == "" || strings.HasPrefix(k, "#") {
			continue
		}
		out[k] = strings.Trim(v, `"'`)
	}
	return out, nil
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// labSupervisor starts the lab's processes and restarts any that exits
// until the lab stops.
type labSupervisor struct {
	exe string
	log *slog.Logger

	mu       sync.Mutex
	procs    []*labProc
	stopping bool
	stopCh   chan struct{}
	wg       sync.WaitGroup
}

func newLabSupervisor(exe string, log *slog.Logger) *labSupervisor {
	return &labSupervisor{exe: exe, log: log, stopCh: make(chan struct{})}
}

// launch starts p once; the channel closes when p prints its ready line.
func (s *labSupervisor) launch(p *labProc) (<-chan struct{}, error) {
	ready := make(chan struct{})
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return nil, errors.New("the lab is stopping")
	}
	if err := p.start(s.exe, ready); err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	return ready, nil
}

// supervise restarts p each time it exits: after first, doubling up to
// max while it keeps dying within a minute of its start.
func (s *labSupervisor) supervise(p *labProc, first, max time.Duration) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		delay := first
		for {
			select {
			case <-s.stopCh:
				return
			case <-p.exited():
			}
			if time.Since(p.startedAt()) > time.Minute {
				delay = first
			}
			s.log.Warn("process exited; restarting", "name", p.name, "after", delay, "log", p.log)
			select {
			case <-s.stopCh:
				return
			case <-time.After(delay):
			}
			s.mu.Lock()
			if s.stopping {
				s.mu.Unlock()
				return
			}
			err := p.start(s.exe, nil)
			s.mu.Unlock()
			if err != nil {
				s.log.Error("restart process", "name", p.name, "err", err)
			}
			delay = min(2*delay, max)
		}
	}()
}

// stopAll ends supervision, then stops every process, tier by tier from
// the highest (SIGTERM, then SIGKILL after grace).
func (s *labSupervisor) stopAll(grace time.Duration) {
	s.mu.Lock()
	if !s.stopping {
		s.stopping = true
		close(s.stopCh)
	}
	procs := append([]*labProc(nil), s.procs...)
	s.mu.Unlock()
	s.wg.Wait()
	tiers := map[int][]*labProc{}
	var order []int
	for _, p := range procs {
		if tiers[p.tier] == nil {
			order = append(order, p.tier)
		}
		tiers[p.tier] = append(tiers[p.tier], p)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(order)))
	for _, t := range order {
		var wg sync.WaitGroup
		for _, p := range tiers[t] {
			wg.Add(1)
			go func(p *labProc) {
				defer wg.Done()
				if p.stop(grace) {
					s.log.Warn("process did not stop on SIGTERM; killed", "name", p.name, "grace", grace, "log", p.log)
				}
			}(p)
		}
		wg.Wait()
	}
}

// RunLab starts the lab's processes, writes DIR/lab.env, and supervises
// until ctx ends.
func RunLab(ctx context.Context, o LabOptions) error {
	if o.Dir == "" {
		return errors.New("--dir is required")
	}
	if o.Nodes < 1 {
		o.Nodes = 3
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if o.Out == nil {
		o.Out = os.Stdout
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return err
	}
	layout, err := loadLabLayout(dir, o.Nodes, o.WithVcsim)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return fmt.Errorf("create lab directory: %w", err)
	}
	if o.Exe == "" {
		if o.Exe, err = os.Executable(); err != nil {
			return fmt.Errorf("find own executable: %w", err)
		}
	}
	log := o.Logger
	sup := newLabSupervisor(o.Exe, log)
	// In-process work (workload, table) stops before the processes do.
	work, stopWork := context.WithCancel(ctx)
	var workWG sync.WaitGroup
	defer func() {
		stopWork()
		workWG.Wait()
		sup.stopAll(10 * time.Second)
		log.Info("lab stopped")
	}()

	env := map[string]string{}
	if o.WithVcsim {
		addr := layout.Vcsim
		vdir := filepath.Join(dir, "vcsim")
		// The simulator builds its inventory afresh and refuses files of
		// an earlier run, so a restarted lab gives it a clean directory.
		if err := os.RemoveAll(vdir); err != nil {
			return fmt.Errorf("clear the simulator directory: %w", err)
		}
		sizes := labDiskSizesMB
		if o.DiskSizesMB != "" {
			sizes = o.DiskSizesMB
		}
		args := []string{"vcsim", "--listen", addr, "--dir", vdir, "--proxy-vms", strconv.Itoa(labProxyVMs), "--disk-sizes-mb", sizes}
		if o.VMs > 0 {
			args = append(args, "--vms", strconv.Itoa(o.VMs))
		}
		p := &labProc{name: "vcsim", args: args, log: filepath.Join(dir, "logs", "vcsim.log"), ready: "vcsim ready"}
		ready, err := sup.launch(p)
		if err != nil {
			return err
		}
		select {
		case <-ready:
		case <-p.exited():
			return fmt.Errorf("vcsim exited before it was ready; see %s", p.log)
		case <-time.After(60 * time.Second):
			return fmt.Errorf("vcsim not ready after 60s; see %s", p.log)
		case <-ctx.Done():
			return ctx.Err()
		}
		venv, err := parseEnvFile(filepath.Join(vdir, "vcsim.env"))
		if err != nil {
			return fmt.Errorf("read vcsim environment: %w", err)
		}
		for k, v := range venv {
			if strings.HasPrefix(k, "GOVC_") {
				env[k] = v
			}
		}
	}

	type node struct{ id, api, raft, data string }
	var nodes []node
	for _, n := range layout.Nodes {
		nodes = append(nodes, node{id: n.ID, api: n.API, raft: n.Raft, data: filepath.Join(dir, n.ID)})
	}
	first := nodes[0]
	for i, n := range nodes {
		args := []string{"coordinator", "--node-id", n.id, "--data-dir", n.data, "--api-addr", n.api, "--raft-addr", n.raft}
		if i == 0 {
			args = append(args, "--bootstrap")
		} else {
			tok, err := os.ReadFile(filepath.Join(first.data, FileJoinToken))
			if err != nil {
				return fmt.Errorf("read join token of %s: %w", first.id, err)
			}
			args = append(args, "--join", "https://"+first.api, "--join-token", strings.TrimSpace(string(tok)))
		}
		p := &labProc{name: n.id, args: args, log: filepath.Join(dir, "logs", n.id+".log"), tier: 1}
		if _, err := sup.launch(p); err != nil {
			return err
		}
		if err := waitCoordinator(ctx, p, n.data, n.api, i == 0); err != nil {
			return err
		}
		sup.supervise(p, time.Second, time.Second)
		log.Info("coordinator up", "node", n.id, "api", "https://"+n.api)
	}

	adminTok, err := os.ReadFile(filepath.Join(first.data, FileAdminToken))
	if err != nil {
		return fmt.Errorf("read admin token: %w", err)
	}
	caPath := filepath.Join(first.data, FileCA)
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return err
	}
	var apis []string
	for _, n := range nodes {
		apis = append(apis, "https://"+n.api)
	}
	cl, err := client.New(strings.Join(apis, ","), strings.TrimSpace(string(adminTok)), caPEM)
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := waitVoters(ctx, cl, o.Nodes, 60*time.Second); err != nil {
		return err
	}
	var vc *model.VCenter
	if url := env["GOVC_URL"]; url != "" {
		if vc, err = cl.GetVCenter(ctx, "lab"); err != nil {
			vc, err = cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: url, Username: env["GOVC_USERNAME"],
				Password: env["GOVC_PASSWORD"], Insecure: env["GOVC_INSECURE"] == "1" || env["GOVC_INSECURE"] == "true"})
			if err != nil {
				return fmt.Errorf("register the lab vCenter: %w", err)
			}
		} else if vc.URL != url {
			// A restarted lab's simulator may serve on the same address
			// only; the registration follows it.
			log.Warn("the lab vCenter moved", "was", vc.URL, "now", url)
		}
	}

	var comps *labComponents
	var inv *labInventory
	if vc != nil {
		if inv, err = readLabInventory(ctx, env, log); err != nil {
			return err
		}
		if err := installLabFilter(ctx, cl, vc.ID, inv, log); err != nil {
			return err
		}
		var names []string
		for _, p := range labProxies {
			names = append(names, p.proc())
		}
		for _, h := range inv.Hosts {
			names = append(names, "filter-"+h.Name)
		}
		addrs, err := layout.components(filepath.Join(dir, "lab.json"), names)
		if err != nil {
			return err
		}
		comps, err = startLabComponents(ctx, cl, componentSetup{dir: dir, coords: apis, caPath: caPath, vcID: vc.ID,
			inv: inv, addrs: addrs, sup: sup, log: log})
		if err != nil {
			return err
		}
		if bad := comps.waitHealthy(ctx, caPEM, 60*time.Second); len(bad) > 0 {
			log.Warn("components not healthy yet; they keep being supervised", "names", strings.Join(bad, ","),
				"logs", filepath.Join(dir, "logs"))
		}
	}

	env["CONTINUUM_API"] = "https://" + first.api
	env["CONTINUUM_TOKEN"] = strings.TrimSpace(string(adminTok))
	env["CONTINUUM_CACERT"] = caPath
	var b strings.Builder
	for _, k := range []string{"CONTINUUM_API", "CONTINUUM_TOKEN", "CONTINUUM_CACERT", "GOVC_URL", "GOVC_USERNAME", "GOVC_PASSWORD", "GOVC_INSECURE"} {
		if v, ok := env[k]; ok {
			fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(v))
		}
	}
	envPath := filepath.Join(dir, "lab.env")
	if err := os.WriteFile(envPath, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", envPath, err)
	}

	var policy *model.Policy
	if !o.NoDemo && vc != nil {
		if policy, err = ensureDemoPolicy(ctx, cl, vc.ID, inv.DemoVMs); err != nil {
			// The lab stays up for the user to look at why.
			log.Error("demo policy not created", "err", err)
		}
	}
	fmt.Fprintf(o.Out, "lab ready\n\n  source %s\n  continuum cluster status\n  continuum proxy list\n", envPath)
	if policy != nil && len(policy.VMs) > 0 {
		vm := policy.VMs[0].Key()
		fmt.Fprintf(o.Out, "  continuum policy status %s\n  continuum vm disks %s\n  continuum restore-point list %s\n",
			policy.Name, vm, vm)
	}
	fmt.Fprintf(o.Out, "  continuum drill ha --kill\n\nlogs: %s\nstop with Ctrl-C\n", filepath.Join(dir, "logs"))

	if policy != nil {
		obs := newLabObserver(cl, policy.Name)
		workWG.Add(1)
		go func() { defer workWG.Done(); obs.run(work, 2*time.Second) }()
		if !o.NoWorkload && comps != nil {
			wl := &labWorkload{obs: obs, comps: comps, log: log}
			for _, vm := range inv.DemoVMs {
				workWG.Add(1)
				go func() { defer workWG.Done(); wl.runVM(work, vm) }()
			}
			obs.workload = wl
		}
		if !o.NoTable {
			workWG.Add(1)
			banner := fmt.Sprintf("lab ready: source %s; logs in %s; Ctrl-C stops", envPath, filepath.Join(dir, "logs"))
			go func() { defer workWG.Done(); obs.table(work, o.Out, 2*time.Second, banner) }()
		}
	}
	<-ctx.Done()
	return nil
}

// labLayout is DIR/lab.json: the addresses of a lab, kept so that running
// the lab again on the same directory restarts the same cluster (raft
// remembers its members by address).
type labLayout struct {
	Vcsim string        `json:"vcsim,omitempty"`
	Nodes []labNodeAddr `json:"nodes"`
	// Components are the addresses of the proxies and filters, by process
	// name, kept so that their records stay right across restarts.
	Components map[string]labCompAddr `json:"components,omitempty"`
}

// components returns the addresses of the named component processes,
// picking free ports for new ones and for those whose port another
// program took meanwhile, and saves the layout.
func (l *labLayout) components(path string, names []string) (map[string]labCompAddr, error) {
	used := map[string]bool{l.Vcsim: true}
	for _, n := range l.Nodes {
		used[n.API], used[n.Raft] = true, true
	}
	for _, c := range l.Components {
		used[c.Listen], used[c.Admin], used[c.NBD] = true, true, true
	}
	free := func(a string) bool {
		if a == "" {
			return false
		}
		ln, err := net.Listen("tcp", a)
		if err != nil {
			return false
		}
		ln.Close()
		return true
	}
	pick := func() (string, error) {
		for range 50 {
			a, err := freeLoopbackAddr()
			if err != nil {
				return "", err
			}
			if !used[a] {
				used[a] = true
				return a, nil
			}
		}
		return "", errors.New("no free loopback port for the lab's components")
	}
	if l.Components == nil {
		l.Components = map[string]labCompAddr{}
	}
	out := map[string]labCompAddr{}
	for _, n := range names {
		c := l.Components[n]
		for _, f := range []*string{&c.Listen, &c.Admin, &c.NBD} {
			if f == &c.NBD && !strings.HasPrefix(n, "filter-") {
				continue
			}
			if !free(*f) {
				a, err := pick()
				if err != nil {
					return nil, err
				}
				*f = a
			}
		}
		l.Components[n], out[n] = c, c
	}
	return out, writeLayout(path, l)
}

type labNodeAddr struct {
	ID   string `json:"id"`
	API  string `json:"api"`
	Raft string `json:"raft"`
}

// loadLabLayout reads DIR/lab.json, checking its addresses are free, or
// picks free loopback ports for a new lab and writes it.
func loadLabLayout(dir string, nodes int, withVcsim bool) (*labLayout, error) {
	path := filepath.Join(dir, "lab.json")
	var l labLayout
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &l); err != nil || len(l.Nodes) == 0 {
			return nil, fmt.Errorf("%s is damaged (%v); remove %s to start a new lab", path, err, dir)
		}
		addrs := []string{}
		for _, n := range l.Nodes {
			addrs = append(addrs, n.API, n.Raft)
		}
		if withVcsim && l.Vcsim != "" {
			addrs = append(addrs, l.Vcsim)
		}
		for _, a := range addrs {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				return nil, fmt.Errorf("address %s of the lab in %s is in use (is that lab still running?): stop it, or remove %s", a, dir, dir)
			}
			ln.Close()
		}
		if withVcsim && l.Vcsim == "" {
			if l.Vcsim, err = freeLoopbackAddr(); err != nil {
				return nil, err
			}
		}
		return &l, writeLayout(path, &l)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if have, _ := exists(filepath.Join(dir, "coord-1")); have {
		return nil, fmt.Errorf("%s holds coordinator data but no lab.json; remove it or pick another --dir", dir)
	}
	for i := 1; i <= nodes; i++ {
		api, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		raft, err := freeLoopbackAddr()
		if err != nil {
			return nil, err
		}
		l.Nodes = append(l.Nodes, labNodeAddr{ID: fmt.Sprintf("coord-%d", i), API: api, Raft: raft})
	}
	if withVcsim {
		if l.Vcsim, err = freeLoopbackAddr(); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create lab directory: %w", err)
	}
	return &l, writeLayout(path, &l)
}

func writeLayout(path string, l *labLayout) error {
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// waitCoordinator waits until a started node answers /healthz (and, for the
// bootstrap node, wrote its admin token).
func waitCoordinator(ctx context.Context, p *labProc, data, api string, bootstrap bool) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		ok := true
		if bootstrap {
			if have, _ := exists(filepath.Join(data, FileAdminToken)); !have {
				ok = false
			}
		}
		if ok {
			if caPEM, err := os.ReadFile(filepath.Join(data, FileCA)); err == nil {
				if c, err := client.New("https://"+api, "", caPEM); err == nil {
					c.RetryFor = 0
					hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					_, err = c.Health(hctx)
					cancel()
					c.Close()
					if err == nil {
						return nil
					}
				}
			}
		}
		select {
		case <-p.exited():
			return fmt.Errorf("%s exited during start; see %s", p.name, p.log)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not up after 60s; see %s", p.name, p.log)
		}
	}
}

// waitVoters waits until the cluster reports n voters and a leader.
func waitVoters(ctx context.Context, c *client.Client, n int, d time.Duration) error {
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		st, err := c.ClusterStatus(ctx)
		if err == nil {
			voters := 0
			for _, m := range st.Members {
				if m.Suffrage == "Voter" {
					voters++
				}
			}
			if voters >= n && st.LeaderID != "" {
				return nil
			}
			last = fmt.Sprintf("%d voters, leader %q", voters, st.LeaderID)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("cluster not formed after %s: %s", d, last)
}

func newLabCommand() *cobra.Command {
	var o LabOptions
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run the whole system on loopback: vCenter simulator, coordinators, proxies, filters, a demo",
		Long: `Start a vCenter simulator (when built in), 3 coordinator processes, the
proxies (a physical and VM ones in each cluster) and one filter per simulated
host on loopback, every one supervised (restarted when it dies). Write
DIR/lab.env for the CLI and govc, and print "lab ready".

Unless --no-demo, protect the demo VMs under a policy named "demo", write to
their disks through the filters' NBD exports (unless --no-workload: then the
disks are left to your own NBD clients, see "continuum vm disks VM"), and show
a table of the VMs every 2s (unless --no-table). Ctrl-C stops everything.
Running it again on the same DIR restarts the same lab.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if vc, _, err := cmd.Root().Find([]string{"vcsim"}); err == nil && vc.Name() == "vcsim" {
				o.WithVcsim = true
			}
			o.Out = cmd.OutOrStdout()
			return RunLab(cmd.Context(), o)
		},
	}
	cmd.Flags().StringVar(&o.Dir, "dir", "", "lab directory (data, logs, lab.env)")
	cmd.Flags().IntVar(&o.Nodes, "nodes", 3, "coordinator nodes")
	cmd.Flags().BoolVar(&o.NoDemo, "no-demo", false, "do not create the demo policy")
	cmd.Flags().BoolVar(&o.NoWorkload, "no-workload", false, "do not write to the demo VMs' disks")
	cmd.Flags().BoolVar(&o.NoTable, "no-table", false, "do not print the live table of the demo VMs")
	cmd.Flags().IntVar(&o.VMs, "vms", 0, "source VMs in the simulator (0: its default)")
	cmd.Flags().StringVar(&o.DiskSizesMB, "disk-sizes-mb", "", "disk sizes of the simulator's source VMs, cycled (MB, comma-separated)")
	_ = cmd.Flags().MarkHidden("vms")
	_ = cmd.Flags().MarkHidden("disk-sizes-mb")
	return cmd
}
