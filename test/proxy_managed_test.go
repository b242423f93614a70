package test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/agent"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
	"github.com/continuum-cdp/continuum/proxy"
)

// managedProc is a `continuum proxy` process in managed mode.
type managedProc struct {
	t        *testing.T
	name     string
	args     []string
	log      string
	admin    string
	listen   string
	cmd      *exec.Cmd
	done     chan struct{}
	adminCli *http.Client
}

func (p *managedProc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(continuumBinary(p.t), p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd, p.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		cmd.Wait()
		f.Close()
		close(done)
	}(p.done)
}

func (p *managedProc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func (p *managedProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

// status reads the proxy's /v1/status over HTTPS (its certificate comes
// from the cluster CA).
func (p *managedProc) status() (proxy.ManagedStatus, error) {
	var st proxy.ManagedStatus
	resp, err := p.adminCli.Get("https://" + p.admin + "/v1/status")
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		return st, fmt.Errorf("status %d", resp.StatusCode)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// startVcsim runs `continuum vcsim` with one source host, one target host
// and one protected VM with a small disk, and returns its environment.
func startVcsim(t *testing.T, root string) map[string]string {
	t.Helper()
	return startVcsimArgs(t, root, 60*time.Second, "--source-hosts", "1", "--target-hosts", "1", "--vms", "1", "--proxy-vms", "-1", "--disk-sizes-mb", "1")
}

// startVcsimArgs runs `continuum vcsim` in root/vcsim with the given lab
// flags, waits up to ready for it, and returns its vcsim.env settings.
func startVcsimArgs(t *testing.T, root string, ready time.Duration, args ...string) map[string]string {
	t.Helper()
	dir := filepath.Join(root, "vcsim")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(continuumBinary(t), append([]string{"vcsim", "--listen", coordFreeAddr(t), "--dir", dir}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	logf, err := os.Create(filepath.Join(root, "vcsim.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait(); logf.Close() })
	up := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "vcsim ready" {
				up <- true
			}
		}
		up <- false
	}()
	select {
	case ok := <-up:
		if !ok {
			b, _ := os.ReadFile(filepath.Join(root, "vcsim.log"))
			t.Fatalf("vcsim exited:\n%s", b)
		}
	case <-time.After(ready):
		t.Fatalf("vcsim not ready after %s", ready)
	}
	b, err := os.ReadFile(filepath.Join(dir, "vcsim.env"))
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "="); ok {
			env[k] = strings.Trim(v, "'\"")
		}
	}
	return env
}

// within polls cond every 100ms until it holds or d passes: the machine
// may be busy with other tests, so the waits are generous.
func within(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: not after %s: %v", what, d, err)
}

// streamFilter plays a source filter over TLS: ordered writes, resent
// after a reconnect from the resume position the proxy answers.
type streamFilter struct {
	t     *testing.T
	addr  string
	conf  *tls.Config
	vm    string
	disks []wire.Disk

	mu     sync.Mutex
	c      *wire.Conn
	seq    uint64
	acked  uint64
	writes []*wire.Write
	gen    int
}

// connect opens a session, retrying until the proxy accepts the VM (it
// does once its configuration names it), then resends what is not
// acknowledged.
func (f *streamFilter) connect(d time.Duration) {
	f.t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for time.Now().Before(deadline) {
		// as the filter process dials (it may switch to integrity frames)
		dctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		nc, err := wire.DialTLS(dctx, nil, f.addr, f.conf)
		cancel()
		if err != nil {
			last = err.Error()
			time.Sleep(200 * time.Millisecond)
			continue
		}
		c := wire.NewConn(nc)
		ack, err := wire.Greet(c, &wire.Hello{Role: wire.RoleSourceFilter, NodeID: "test-filter", VM: f.vm, Disks: f.disks}, 40*time.Second)
		if err != nil || ack.Err != "" {
			c.Close()
			if err != nil {
				last = err.Error()
			} else {
				last = ack.Err
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		f.mu.Lock()
		if f.c != nil {
			f.c.Close()
		}
		f.c = c
		f.gen++
		gen := f.gen
		f.acked = max(f.acked, min(ack.Resume, f.seq))
		var resend []*wire.Write
		for _, w := range f.writes {
			if w.Seq > ack.Resume {
				resend = append(resend, w)
			}
		}
		f.mu.Unlock()
		for _, w := range resend {
			if err := c.Send(w); err != nil {
				f.t.Fatalf("resend %d: %v", w.Seq, err)
			}
		}
		go f.readAcks(c, gen)
		return
	}
	f.t.Fatalf("source proxy %s does not accept vm %s: %s", f.addr, f.vm, last)
}

func (f *streamFilter) readAcks(c *wire.Conn, gen int) {
	for {
		m, err := c.ReadMsg()
		if err != nil {
			return
		}
		if a, ok := m.(*wire.Ack); ok {
			f.mu.Lock()
			if f.gen == gen && a.Seq > f.acked {
				f.acked = a.Seq
			}
			f.mu.Unlock()
		}
	}
}

// write sends n writes; a failed send leaves them for the next session.
func (f *streamFilter) write(rnd *rand.Rand, n int, flags uint8) {
	for range n {
		d := f.disks[rnd.IntN(len(f.disks))]
		l := 512 * (1 + rnd.Int64N(16))
		off := 512 * rnd.Int64N((d.Capacity-l)/512)
		data := make([]byte, l)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		f.mu.Lock()
		f.seq++
		w := &wire.Write{Seq: f.seq, Disk: d.Key, Off: off, Op: wire.OpData, Len: uint32(l), Flags: flags, Data: data}
		f.writes = append(f.writes, w)
		c := f.c
		f.mu.Unlock()
		_ = c.Send(w)
	}
}

func (f *streamFilter) marker(kind uint8) {
	f.mu.Lock()
	f.seq++
	c, seq := f.c, f.seq
	// a marker takes a sequence like a write; resending it is not needed
	// here because it is sent on a live session and acknowledged below
	f.mu.Unlock()
	if err := c.Send(&wire.Marker{Seq: seq, Kind: kind}); err != nil {
		f.t.Fatal(err)
	}
}

func (f *streamFilter) waitAcked(d time.Duration) {
	f.t.Helper()
	f.mu.Lock()
	want := f.seq
	f.mu.Unlock()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		got := f.acked
		f.mu.Unlock()
		if got >= want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t.Fatalf("acknowledged %d of %d after %s", f.acked, want, d)
}

// checkExact compares every listed point of the journal with the writes
// up to it and wants the newest point to hold the last write.
func (f *streamFilter) checkExact(ts *target.Service) {
	f.t.Helper()
	v, ok := ts.Store().VM(f.vm)
	if !ok {
		f.t.Fatalf("vm %s not in the target journal", f.vm)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if v.LastID() != f.seq {
		f.t.Fatalf("journal ends at %d, last sequence %d", v.LastID(), f.seq)
	}
	pts := v.List()
	for i, p := range pts {
		if i > 0 && p.ID <= pts[i-1].ID {
			f.t.Fatalf("points not increasing: %+v", pts)
		}
		for _, d := range f.disks {
			want := make([]byte, d.Capacity)
			for _, w := range f.writes {
				if w.Seq <= p.ID && w.Disk == d.Key {
					copy(want[w.Off:], w.Data)
				}
			}
			pr, err := v.OpenPoint(p.ID, d.Key)
			if err != nil {
				f.t.Fatal(err)
			}
			got := make([]byte, pr.Size())
			if _, err := pr.ReadAt(got, 0); err != nil {
				f.t.Fatal(err)
			}
			pr.Close()
			if !bytes.Equal(got, want) {
				f.t.Fatalf("point %d disk %d differs from the writes up to it", p.ID, d.Key)
			}
		}
	}
}

// TestProxyManaged: three `continuum proxy` processes in managed mode
// against a real coordinator (with a simulated vCenter): a policy's task
// makes data flow from the source proxy through target proxy A to the
// target filter; editing the policy's target proxy moves the stream to
// target proxy B with the journal exact; with the coordinator gone, data
// keeps flowing, even through a source proxy restarted on its cached
// configuration.
func TestProxyManaged(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	root := t.TempDir()
	venv := startVcsim(t, root)
	coord := newCoordNode(t, root, "c1", "--bootstrap")
	coord.bootstrap = true
	coord.start()
	coord.waitUp()
	tok, err := os.ReadFile(filepath.Join(coord.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	caPath := filepath.Join(coord.data, "ca.pem")
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(coord.url(), strings.TrimSpace(string(tok)), caPEM)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	cl.RetryFor = 10 * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	vc, err := cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: venv["GOVC_URL"], Username: venv["GOVC_USERNAME"],
		Password: venv["GOVC_PASSWORD"], Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"src-cluster", "dst-cluster"} {
		within(t, 60*time.Second, "install the filter on "+c, func() error {
			_, err := cl.InstallFilter(ctx, client.FilterInstallRequest{VCenterID: vc.ID, Cluster: c})
			return err
		})
	}
	ctok, err := cl.CreateToken(ctx, model.TokenComponent)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	adminCli := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}

	procs := map[string]*managedProc{}
	ids := map[string]string{}
	for _, spec := range []struct {
		name string
		role model.ProxyRole
	}{{"src", model.RoleSource}, {"dst-a", model.RoleTarget}, {"dst-b", model.RoleTarget}} {
		listen, admin := coordFreeAddr(t), coordFreeAddr(t)
		px, err := cl.CreateProxy(ctx, &model.Proxy{Name: spec.name, Role: spec.role, Kind: model.KindPhysical, Address: listen, MaxTasks: 4})
		if err != nil {
			t.Fatal(err)
		}
		ids[spec.name] = px.ID
		p := &managedProc{t: t, name: spec.name, log: filepath.Join(root, "proxy-"+spec.name+".log"), admin: admin, listen: listen,
			adminCli: adminCli,
			args: []string{"proxy", "--coordinator", coord.url(), "--token", ctok.Token, "--cacert", caPath,
				"--state-dir", filepath.Join(root, "state-"+spec.name), "--proxy-id", px.ID,
				"--listen", listen, "--admin-addr", admin, "--cut-bytes", "65536"}}
		p.start()
		t.Cleanup(p.kill)
		procs[spec.name] = p
	}
	for name, p := range procs {
		within(t, 60*time.Second, "proxy "+name+" serves its admin API", func() error {
			select {
			case <-p.done:
				t.Fatalf("proxy %s exited:\n%s", name, p.logTail())
			default:
			}
			_, err := p.status()
			return err
		})
	}

	// The target filter of the target host, in this process: its
	// certificate and its address reach the coordinator like a filter's.
	fag, err := agent.New(agent.Config{Coordinators: []string{coord.url()}, Token: ctok.Token, CACertFile: caPath,
		Kind: model.ComponentFilter, ID: "dst-esx-01", VCenterID: vc.ID, StateDir: filepath.Join(root, "state-filter"),
		Interval: 500 * time.Millisecond, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	fcert, fpool, err := fag.TLS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fconf := proxy.DataTLS(fcert, fpool)
	ts, err := target.New(target.Config{JournalDir: filepath.Join(root, "journal"), ListenAddr: "127.0.0.1:0", TLS: fconf})
	if err != nil {
		t.Fatal(err)
	}
	tsDone := make(chan error, 1)
	go func() { tsDone <- ts.Run(context.Background()) }()
	defer func() { ts.Close(); <-tsDone }()
	// the test's source filter presents a component certificate as well,
	// and its host must have reported for the task to be configured
	sag, err := agent.New(agent.Config{Coordinators: []string{coord.url()}, Token: ctok.Token, CACertFile: caPath,
		Kind: model.ComponentFilter, ID: "src-esx-01", VCenterID: vc.ID, StateDir: filepath.Join(root, "state-src-filter"),
		Interval: 500 * time.Millisecond, Hosts: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	scert, spool, err := sag.TLS(ctx)
	if err != nil {
		t.Fatal(err)
	}
	actx, acancel := context.WithCancel(context.Background())
	agDone := make(chan error, 2)
	for _, ag := range []*agent.Agent{fag, sag} {
		go func() {
			agDone <- ag.Run(actx, func() model.ComponentReport {
				return model.ComponentReport{DataAddr: ts.Addr()}
			}, func(model.ComponentConfig) error { return nil })
		}()
	}
	defer func() { acancel(); <-agDone; <-agDone }()

	// the hosts and proxies of this site (all on loopback) trade
	// confidentiality for CPU between host filters and proxies; points
	// between the proxies stay sealed with the task key
	if _, err := cl.CreateTrafficRule(ctx, &model.TrafficRule{Name: "site", SourceCIDR: "127.0.0.0/8", TargetCIDR: "127.0.0.0/8",
		Encrypt: true, HostTraffic: model.HostTrafficIntegrity}); err != nil {
		t.Fatal(err)
	}
	pol, err := cl.CreatePolicy(ctx, &model.Policy{Name: "managed", Enabled: true, VCenterID: vc.ID,
		Target: model.Target{VCenterID: vc.ID, Cluster: "dst-cluster", Datastore: "dst-ds-01"},
		RPO:    model.Duration(time.Second), ShortTermRetention: model.Duration(time.Hour),
		LongTermEvery: model.Duration(time.Hour), LongTermRetention: model.Duration(24 * time.Hour),
		ProxySelection: model.SelectManual, SourceProxies: []string{ids["src"]}, TargetProxies: []string{ids["dst-a"]},
		VMs: []model.VMRef{{Name: "app-001"}}})
	if err != nil {
		t.Fatal(err)
	}
	var task *model.VMTask
	within(t, 90*time.Second, "the task is planned with both proxies and hosts", func() error {
		st, err := cl.PolicyStatus(ctx, pol.ID)
		if err != nil {
			return err
		}
		if len(st.Tasks) != 1 {
			return fmt.Errorf("%d tasks", len(st.Tasks))
		}
		tk := st.Tasks[0]
		if tk.SourceProxy != ids["src"] || tk.TargetProxy != ids["dst-a"] || tk.TargetHost == "" || tk.SourceHost == "" || len(tk.Disks) == 0 {
			return fmt.Errorf("task %+v", tk)
		}
		task = tk
		return nil
	})
	var disks []wire.Disk
	for _, d := range task.Disks {
		disks = append(disks, wire.Disk{Key: d.Key, Capacity: d.CapacityBytes})
	}
	f := &streamFilter{t: t, addr: procs["src"].listen, conf: proxy.DataTLS(scert, spool), vm: task.VMName, disks: disks}
	f.connect(60 * time.Second)
	rnd := rand.New(rand.NewPCG(1, 7))
	f.write(rnd, 40, wire.FlagInitial)
	f.marker(wire.MarkerInitialSyncDone)
	f.write(rnd, 40, 0)
	f.waitAcked(60 * time.Second)
	f.checkExact(ts)
	checkIntegrityLinks(t, f, procs["src"], procs["dst-a"])
	st, err := procs["dst-a"].status()
	if err != nil || len(st.TargetVMs) != 1 || st.TargetVMs[0] != task.VMName {
		t.Fatalf("target proxy A status %+v %v", st, err)
	}
	within(t, 60*time.Second, "the coordinator records the source proxy's lag", func() error {
		ps, err := cl.PolicyStatus(ctx, pol.ID)
		if err != nil {
			return err
		}
		if tk := ps.Tasks[0]; tk.LastPointAt.IsZero() {
			return fmt.Errorf("no last point in %+v", tk)
		}
		return nil
	})

	// Move the task to target proxy B while writing.
	cur, err := cl.GetPolicy(ctx, pol.ID)
	if err != nil {
		t.Fatal(err)
	}
	cur.TargetProxies = []string{ids["dst-b"]}
	if _, err := cl.UpdatePolicy(ctx, pol.ID, cur); err != nil {
		t.Fatal(err)
	}
	stop := time.Now().Add(60 * time.Second)
	for {
		f.write(rnd, 5, 0)
		sb, errB := procs["dst-b"].status()
		ss, errS := procs["src"].status()
		if errB == nil && errS == nil && len(sb.TargetVMs) == 1 && len(ss.SourceVMs) == 1 &&
			ss.SourceVMs[0].Target == procs["dst-b"].listen && ss.SourceVMs[0].TargetConnected {
			break
		}
		if time.Now().After(stop) {
			t.Fatalf("the stream did not move to target proxy B: %+v %v / %+v %v", sb, errB, ss, errS)
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.write(rnd, 40, 0)
	f.waitAcked(60 * time.Second)
	f.checkExact(ts)
	if sa, err := procs["dst-a"].status(); err != nil || len(sa.TargetVMs) != 0 {
		t.Fatalf("target proxy A still serves %+v %v", sa, err)
	}

	// No coordinator: the data path runs on its last configuration, also
	// in a source proxy restarted meanwhile (it reads its cached one).
	coord.kill()
	f.write(rnd, 20, 0)
	f.waitAcked(60 * time.Second)
	procs["src"].kill()
	procs["src"].start()
	f.connect(60 * time.Second)
	f.write(rnd, 20, 0)
	f.waitAcked(60 * time.Second)
	f.checkExact(ts)
	if ss, err := procs["src"].status(); err != nil || len(ss.SourceVMs) != 1 || ss.SourceVMs[0].Target != procs["dst-b"].listen || ss.ConfigVersion == "" {
		t.Fatalf("restarted source proxy without a coordinator: %+v %v", ss, err)
	}
	// its cached configuration keeps the traffic rule
	checkIntegrityLinks(t, f, procs["src"], procs["dst-b"])
}

// checkIntegrityLinks checks that the filter's session with the source
// proxy and the target proxy's session with the target filter carry
// integrity frames, and that the hop between the proxies is TLS with its
// points sealed.
func checkIntegrityLinks(t *testing.T, f *streamFilter, src, dst *managedProc) {
	t.Helper()
	f.mu.Lock()
	link := f.c.Protection()
	f.mu.Unlock()
	if link != "integrity" {
		t.Errorf("filter to source proxy: %s, want integrity", link)
	}
	ss, err := src.status()
	if err != nil || len(ss.SourceVMs) != 1 || ss.SourceVMs[0].FilterLink != "integrity" || !ss.SourceVMs[0].Encrypted {
		t.Errorf("source proxy status %+v %v: want its filter on integrity frames and its points sealed", ss, err)
	}
	b, err := os.ReadFile(dst.log)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "source_link=tls filter_link=integrity") {
		t.Errorf("target proxy %s: no session with TLS from the source proxy and integrity frames to the target filter:\n%s", dst.name, dst.logTail())
	}
}
