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
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/netutil"
)

// LabOptions configure "continuum lab".
type LabOptions struct {
	Dir        string
	Nodes      int
	NoDemo     bool
	NoWorkload bool
	WithVcsim  bool // start "continuum vcsim" first
	Exe        string
	Out        io.Writer
	Logger     *slog.Logger
}

// labProc is one supervised child process.
type labProc struct {
	name  string
	args  []string
	log   string
	ready string // line on stdout that says it is ready ("" for none)

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
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
	p.cmd, p.done = cmd, done
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

// stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *labProc) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
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
	var procs []*labProc
	var mu sync.Mutex
	stopping := false
	defer func() {
		mu.Lock()
		stopping = true
		mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func(p *labProc) { defer wg.Done(); p.stop(10 * time.Second) }(p)
		}
		wg.Wait()
		log.Info("lab stopped")
	}()
	launch := func(p *labProc) (<-chan struct{}, error) {
		ready := make(chan struct{})
		if err := p.start(o.Exe, ready); err != nil {
			return nil, err
		}
		mu.Lock()
		procs = append(procs, p)
		mu.Unlock()
		return ready, nil
	}

	env := map[string]string{}
	if o.WithVcsim {
		addr := layout.Vcsim
		vdir := filepath.Join(dir, "vcsim")
		// The simulator builds its inventory afresh and refuses files of
		// an earlier run, so a restarted lab gives it a clean directory.
		if err := os.RemoveAll(vdir); err != nil {
			return fmt.Errorf("clear the simulator directory: %w", err)
		}
		p := &labProc{name: "vcsim", args: []string{"vcsim", "--listen", addr, "--dir", vdir},
			log: filepath.Join(dir, "logs", "vcsim.log"), ready: "vcsim ready"}
		ready, err := launch(p)
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
	var coordProcs []*labProc
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
		p := &labProc{name: n.id, args: args, log: filepath.Join(dir, "logs", n.id+".log"), ready: ""}
		if _, err := launch(p); err != nil {
			return err
		}
		coordProcs = append(coordProcs, p)
		if err := waitCoordinator(ctx, p, n.data, n.api, i == 0); err != nil {
			return err
		}
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
	if url := env["GOVC_URL"]; url != "" {
		if _, err := cl.GetVCenter(ctx, "lab"); err != nil {
			_, err := cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: url, Username: env["GOVC_USERNAME"],
				Password: env["GOVC_PASSWORD"], Insecure: env["GOVC_INSECURE"] == "1" || env["GOVC_INSECURE"] == "true"})
			if err != nil {
				return fmt.Errorf("register the lab vCenter: %w", err)
			}
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
	fmt.Fprintf(o.Out, "lab ready\n\n  source %s\n  continuum cluster status\n  continuum drill ha --kill\n\nlogs: %s\nstop with Ctrl-C\n",
		envPath, filepath.Join(dir, "logs"))
	if !o.NoDemo {
		log.Info("no demo policy yet: the controllers that protect VMs are not part of this build")
	}

	// Supervise: restart any coordinator that dies.
	for {
		cases := make([]<-chan struct{}, len(coordProcs))
		for i, p := range coordProcs {
			cases[i] = p.exited()
		}
		dead := -1
		waitAny := make(chan int, len(cases))
		stopWait := make(chan struct{})
		for i, ch := range cases {
			go func(i int, ch <-chan struct{}) {
				select {
				case <-ch:
					waitAny <- i
				case <-stopWait:
				}
			}(i, ch)
		}
		select {
		case <-ctx.Done():
			close(stopWait)
			return nil
		case dead = <-waitAny:
			close(stopWait)
		}
		mu.Lock()
		st := stopping
		mu.Unlock()
		if st {
			return nil
		}
		p := coordProcs[dead]
		log.Warn("coordinator exited; restarting", "node", p.name, "log", p.log)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
		if err := p.start(o.Exe, nil); err != nil {
			log.Error("restart coordinator", "node", p.name, "err", err)
		}
	}
}

// labLayout is DIR/lab.json: the addresses of a lab, kept so that running
// the lab again on the same directory restarts the same cluster (raft
// remembers its members by address).
type labLayout struct {
	Vcsim string        `json:"vcsim,omitempty"`
	Nodes []labNodeAddr `json:"nodes"`
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
		Short: "Run a coordinator cluster (and a vCenter simulator when built in) on loopback",
		Long: `Start 3 coordinator processes on loopback (and "continuum vcsim" first when
available), write DIR/lab.env, print "lab ready" and supervise: a coordinator
that dies is restarted. Ctrl-C stops everything.`,
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
	return cmd
}
