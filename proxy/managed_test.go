package proxy

import (
	"context"
	"crypto/tls"
	"math/rand/v2"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// componentTLS issues component certificates (OU "component") from one CA,
// as the coordinators do, and returns their data-path TLS configurations.
func componentTLS(t *testing.T, n int) []*tls.Config {
	t.Helper()
	ca, err := pki.NewCA("cluster-ca")
	if err != nil {
		t.Fatal(err)
	}
	out := make([]*tls.Config, n)
	for i := range out {
		leaf, err := ca.IssueComponent("component", nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = DataTLS(leaf.TLSCertificate(ca.Cert), pki.Pool(ca.Cert))
	}
	return out
}

func startManaged(t *testing.T, id string, conf *tls.Config) *Managed {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewManaged(ManagedConfig{ID: id, Advertise: l.Addr().String(), TLS: conf, Logger: testLogger(),
		Registerer: prometheus.NewRegistry(),
		Source:     SourceConfig{CutBytes: 32 << 10, Codec: wire.CodecZstd}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); m.Close(); <-done })
	return m
}

// TestManagedProxiesFollowTheirConfig: three managed proxies share one
// configuration; the task makes the first the source proxy and the second
// the target proxy; a new version moves the target to the third. Writes
// flow over component certificates, the journal stays exact, and the
// source reports its lag per task.
func TestManagedProxiesFollowTheirConfig(t *testing.T) {
	confs := componentTLS(t, 5)
	fs, err := target.New(target.Config{JournalDir: t.TempDir(), ListenAddr: "127.0.0.1:0", TLS: confs[0]})
	if err != nil {
		t.Fatal(err)
	}
	fsDone := make(chan error, 1)
	go func() { fsDone <- fs.Run(context.Background()) }()
	t.Cleanup(func() { fs.Close(); <-fsDone })
	src, tA, tB := startManaged(t, "p-src", confs[1]), startManaged(t, "p-a", confs[2]), startManaged(t, "p-b", confs[3])

	task := model.TaskPath{TaskID: "task-1", VM: "vm-a", RPO: model.Duration(20 * time.Millisecond),
		SourceProxy: src.cfg.Advertise, TargetProxy: tA.cfg.Advertise, TargetFilter: fs.Addr(), Key: testKey(11)}
	other := model.TaskPath{TaskID: "task-2", VM: "vm-z", SourceProxy: "127.0.0.1:1", TargetProxy: "127.0.0.1:2",
		TargetFilter: fs.Addr(), Key: testKey(12)}
	apply := func(version string, tasks ...model.TaskPath) {
		t.Helper()
		cfg := model.ComponentConfig{Version: version, Kind: model.ComponentProxy, Tasks: tasks}
		for _, m := range []*Managed{src, tA, tB} {
			if err := m.Apply(cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	apply("v1", task, other)
	if vms := tA.tgt.Routes(); len(vms) != 1 || vms[0] != "vm-a" {
		t.Fatalf("target proxy A serves %v", vms)
	}
	if vms := tB.tgt.Routes(); len(vms) != 0 {
		t.Fatalf("target proxy B serves %v", vms)
	}

	d := tls.Dialer{Config: confs[4]}
	nc, err := d.DialContext(context.Background(), "tcp", src.cfg.Advertise)
	if err != nil {
		t.Fatal(err)
	}
	f, ack := connectFilterConn(t, nc, "vm-a")
	if ack.Err != "" {
		t.Fatal(ack.Err)
	}
	rnd := rand.New(rand.NewPCG(7, 8))
	f.write(rnd, 30, true)
	f.marker(wire.MarkerInitialSyncDone)
	f.write(rnd, 30, false)
	f.waitAck(f.seq)

	task.TargetProxy = tB.cfg.Advertise
	f.write(rnd, 20, false)
	apply("v2", task)
	f.write(rnd, 40, false)
	f.waitAck(f.seq)
	if n := counterValue(t, tB.tgt.m.points); n == 0 {
		t.Fatal("no point went through the new target proxy")
	}
	if vms := tA.tgt.Routes(); len(vms) != 0 {
		t.Fatalf("old target proxy still serves %v", vms)
	}
	checkJournal(t, fs, f)

	rep := src.Report()
	if rep.Kind != model.ComponentProxy || rep.ID != "p-src" || rep.ConfigVersion != "v2" || rep.DataAddr != src.cfg.Advertise {
		t.Fatalf("report %+v", rep)
	}
	if len(rep.VMs) != 1 || rep.VMs[0].TaskID != "task-1" || rep.VMs[0].VM != "vm-a" || rep.VMs[0].LagSeconds <= 0 || rep.VMs[0].LastPointAt.IsZero() {
		t.Fatalf("vm reports %+v", rep.VMs)
	}
	if len(tB.Report().VMs) != 0 {
		t.Fatal("a target proxy reported source lag")
	}

	// a peer with a certificate of another CA gets nothing
	stranger := targetTLS(t)
	d = tls.Dialer{Config: stranger}
	if nc, err := d.DialContext(context.Background(), "tcp", src.cfg.Advertise); err == nil {
		c := wire.NewConn(nc)
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		c.Send(&wire.Hello{Role: wire.RoleSourceFilter, VM: "vm-a", Disks: targetTestDisks})
		if m, err := c.ReadMsg(); err == nil {
			t.Fatalf("a foreign certificate got %+v", m)
		}
		c.Close()
	}
}

// TestManagedApplyChecks: a malformed configuration changes nothing.
func TestManagedApplyChecks(t *testing.T) {
	confs := componentTLS(t, 1)
	m := startManaged(t, "p", confs[0])
	good := model.ComponentConfig{Version: "v1", Tasks: []model.TaskPath{{TaskID: "t1", VM: "vm-a",
		SourceProxy: m.cfg.Advertise, TargetProxy: "127.0.0.1:9", Key: testKey(1)}}}
	if err := m.Apply(good); err != nil {
		t.Fatal(err)
	}
	for name, tasks := range map[string][]model.TaskPath{
		"short key":   {{TaskID: "t1", VM: "vm-a", SourceProxy: m.cfg.Advertise, TargetProxy: "127.0.0.1:9", Key: []byte("x")}},
		"no vm":       {{TaskID: "t1", SourceProxy: m.cfg.Advertise, TargetProxy: "127.0.0.1:9"}},
		"bad filter":  {{TaskID: "t1", VM: "vm-a", SourceProxy: "127.0.0.1:8", TargetProxy: m.cfg.Advertise, TargetFilter: "nowhere"}},
		"vm twice":    {good.Tasks[0], {TaskID: "t2", VM: "vm-a", SourceProxy: m.cfg.Advertise, TargetProxy: "127.0.0.1:7"}},
		"bad address": {{TaskID: "t1", VM: "vm-a", SourceProxy: m.cfg.Advertise, TargetProxy: "nowhere", Key: testKey(1)}},
	} {
		if err := m.Apply(model.ComponentConfig{Version: "bad", Tasks: tasks}); err == nil {
			t.Errorf("%s: applied", name)
		}
		if m.Version() != "v1" || m.src.routes["vm-a"] == nil || m.src.routes["vm-a"].Target != "127.0.0.1:9" {
			t.Fatalf("%s: the configuration in force changed", name)
		}
	}
	for _, c := range []struct {
		task, self string
		want       bool
	}{
		{"10.0.0.1:9000", "10.0.0.1:9000", true},
		{"10.0.0.1:9000", "0.0.0.0:9000", true},
		{"10.0.0.1:9000", ":9000", true},
		{"10.0.0.1:9000", "10.0.0.2:9000", false},
		{"10.0.0.1:9000", "0.0.0.0:9001", false},
	} {
		if got := hostPortMatch(c.task, c.self); got != c.want {
			t.Errorf("hostPortMatch(%q, %q) = %v", c.task, c.self, got)
		}
	}
}

// TestManagedCommandChecks: managed mode refuses incomplete flags before
// it listens or calls anyone.
func TestManagedCommandChecks(t *testing.T) {
	full := managedFlags{Coordinators: []string{"https://127.0.0.1:1"}, Token: "tok", CACert: "ca.pem", StateDir: t.TempDir(), ProxyID: "p1"}
	cfg := FileConfig{Listen: "127.0.0.1:0", Codec: "s2", LogLevel: "error"}
	for name, c := range map[string]struct {
		mf  func(*managedFlags)
		cfg func(*FileConfig)
	}{
		"no proxy id":  {mf: func(m *managedFlags) { m.ProxyID = "" }},
		"no token":     {mf: func(m *managedFlags) { m.Token = "" }},
		"no ca":        {mf: func(m *managedFlags) { m.CACert = "" }},
		"no state dir": {mf: func(m *managedFlags) { m.StateDir = "" }},
		"no listen":    {cfg: func(f *FileConfig) { f.Listen = "" }},
		"plaintext":    {cfg: func(f *FileConfig) { f.Plaintext = true }},
		"bad codec":    {cfg: func(f *FileConfig) { f.Codec = "lzma" }},
		"missing ca":   {},
	} {
		mf, fc := full, cfg
		if c.mf != nil {
			c.mf(&mf)
		}
		if c.cfg != nil {
			c.cfg(&fc)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := runManaged(ctx, fc, mf)
		cancel()
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestDataTLSResumes: a second connection to the same peer resumes the
// first one's session instead of a full handshake; a certificate from
// another CA is refused, resumed or not.
func TestDataTLSResumes(t *testing.T) {
	confs := componentTLS(t, 2)
	server, client := confs[0], confs[1]
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				// Reading lets the session ticket go out and the client's
				// byte come in.
				buf := make([]byte, 1)
				_, _ = c.Read(buf)
				_, _ = c.Write(buf)
			}()
		}
	}()
	dial := func(conf *tls.Config) (bool, error) {
		c, err := tls.Dial("tcp", l.Addr().String(), conf)
		if err != nil {
			return false, err
		}
		defer c.Close()
		if _, err := c.Write([]byte{1}); err != nil {
			return false, err
		}
		buf := make([]byte, 1)
		if _, err := c.Read(buf); err != nil {
			return false, err
		}
		return c.ConnectionState().DidResume, nil
	}
	if resumed, err := dial(client); err != nil || resumed {
		t.Fatalf("first connection: resumed %v, %v", resumed, err)
	}
	if resumed, err := dial(client); err != nil || !resumed {
		t.Fatalf("second connection: resumed %v, %v", resumed, err)
	}
	stranger := componentTLS(t, 1)[0]
	if _, err := dial(stranger); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
}
