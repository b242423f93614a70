package proxy

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// TestTrafficRuleMatching: the first rule whose source CIDR holds the local
// address and whose target CIDR holds the target's address wins.
func TestTrafficRuleMatching(t *testing.T) {
	key, _ := wire.NewSealer(make([]byte, wire.KeySize))
	rules, err := compileRules([]model.TrafficRule{
		{Name: "lan-clear", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.0.0.0/8"},
		{Name: "wan", SourceCIDR: "10.0.0.0/8", TargetCIDR: "0.0.0.0/0", Encrypt: true, ThrottleBytesPerSec: 1 << 20},
		{Name: "one-host", TargetCIDR: "192.168.1.7", Encrypt: true},
		{Name: "v6", SourceCIDR: "fd00::/8", TargetCIDR: "fd00::/8", ThrottleBytesPerSec: 5 << 20},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ local, remote, want string }{
		{"10.1.2.3", "10.9.9.9", "lan-clear"},
		{"10.1.2.3", "192.168.1.7", "wan"},        // first match wins over one-host
		{"172.16.0.1", "192.168.1.7", "one-host"}, // empty source: any
		{"172.16.0.1", "192.168.1.8", ""},
		{"::ffff:10.1.2.3", "::ffff:10.2.0.1", "lan-clear"}, // mapped v4
		{"fd00::1", "fd00::2", "v6"},
		{"fe80::1", "fd00::2", ""},
	}
	for _, c := range cases {
		r := matchRule(rules, netip.MustParseAddr(c.local), netip.MustParseAddr(c.remote))
		got := ""
		if r != nil {
			got = r.rule.Name
		}
		if got != c.want {
			t.Errorf("%s -> %s: rule %q, want %q", c.local, c.remote, got, c.want)
		}
	}
	if rules[1].bucket == nil || rules[0].bucket != nil {
		t.Error("a bucket only for throttling rules")
	}
	bad := []model.TrafficRule{
		{Name: "x", SourceCIDR: "10.0.0.0/33"},
		{Name: "x", TargetCIDR: "not-an-ip"},
		{Name: "x", ThrottleBytesPerSec: -1},
	}
	for _, b := range bad {
		if _, err := compileRules([]model.TrafficRule{b}, key); err == nil {
			t.Errorf("rule %+v accepted", b)
		}
	}
	if _, err := compileRules([]model.TrafficRule{{Name: "enc", Encrypt: true}}, nil); err == nil {
		t.Error("encrypting rule accepted without a key")
	}
	if _, err := NewSource(SourceConfig{DialTarget: func(context.Context) (net.Conn, error) { return nil, nil },
		Rules: []model.TrafficRule{{Name: "enc", Encrypt: true}}}); err == nil {
		t.Error("source proxy started with an encrypting rule and no key")
	}
}

// TestTrafficRuleFlag: the repeatable flag parses rules, rejects bad ones,
// and rules given as flags replace those of the config file.
// host_traffic is decided by the first rule whose source holds the end
// that sends and whose target holds the end that receives; no rule, or a
// first match without it, keeps TLS.
func TestHostIntegrityRules(t *testing.T) {
	rules, err := compileRules([]model.TrafficRule{
		{Name: "dmz", SourceCIDR: "10.1.9.0/24", TargetCIDR: "10.1.0.0/16"},
		{Name: "site", SourceCIDR: "10.1.0.0/16", TargetCIDR: "10.1.0.0/16", HostTraffic: model.HostTrafficIntegrity},
		{Name: "wan", SourceCIDR: "10.1.0.0/16", TargetCIDR: "10.2.0.0/16", HostTraffic: model.HostTrafficEncrypted},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(s string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(s), Port: 1} }
	for _, c := range []struct {
		from, to string
		want     bool
	}{
		{"10.1.0.5", "10.1.0.7", true},
		{"10.1.9.5", "10.1.0.7", false}, // the first match has no host_traffic
		{"10.1.0.5", "10.2.0.7", false},
		{"10.1.0.7", "10.3.0.5", false}, // no rule
		{"::ffff:10.1.0.5", "10.1.0.7", true},
	} {
		if got := hostIntegrity(rules, addr(c.from), addr(c.to)); got != c.want {
			t.Errorf("%s to %s: integrity %v, want %v", c.from, c.to, got, c.want)
		}
	}
	if _, err := compileRules([]model.TrafficRule{{Name: "bad", HostTraffic: "plain"}}, nil); err == nil {
		t.Error("an unknown host_traffic was accepted")
	}
}

func TestTrafficRuleFlag(t *testing.T) {
	r, err := ParseTrafficRule("name=wan,source=10.0.0.0/8,target=192.168.0.0/16,encrypt=true,throttle=1048576")
	want := model.TrafficRule{Name: "wan", SourceCIDR: "10.0.0.0/8", TargetCIDR: "192.168.0.0/16", Encrypt: true, ThrottleBytesPerSec: 1 << 20}
	if err != nil || r != want {
		t.Fatalf("parse: %+v %v", r, err)
	}
	r, err = ParseTrafficRule("name=site,source=10.1.0.0/16,target=10.1.0.0/16,host_traffic=integrity")
	want = model.TrafficRule{Name: "site", SourceCIDR: "10.1.0.0/16", TargetCIDR: "10.1.0.0/16", HostTraffic: model.HostTrafficIntegrity}
	if err != nil || r != want {
		t.Fatalf("parse host_traffic: %+v %v", r, err)
	}
	if got := (trafficRulesValue{&[]model.TrafficRule{r}}).String(); !strings.Contains(got, "host_traffic=integrity") {
		t.Fatalf("flag value %q drops host_traffic", got)
	}
	for _, s := range []string{"name=x,colour=red", "name=x,encrypt=maybe", "target=1.2.3.4/99", "throttle=-5", "name", "name=x,host_traffic=clear"} {
		if _, err := ParseTrafficRule(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
	dir := t.TempDir()
	file := dir + "/proxy.json"
	os.WriteFile(file, []byte(`{"role":"source","traffic_rules":[{"name":"file","target_cidr":"10.0.0.0/8","encrypt":true}]}`), 0o600)
	var cfg FileConfig
	fs := pflag.NewFlagSet("p", pflag.ContinueOnError)
	fs.Var(trafficRulesValue{&cfg.TrafficRules}, "traffic-rule", "")
	fs.StringVar(&cfg.Role, "role", "", "")
	if err := loadConfig(fs, file, &cfg); err != nil || len(cfg.TrafficRules) != 1 || cfg.TrafficRules[0].Name != "file" {
		t.Fatalf("rules from the file: %+v %v", cfg.TrafficRules, err)
	}
	cfg = FileConfig{}
	fs = pflag.NewFlagSet("p", pflag.ContinueOnError)
	fs.Var(trafficRulesValue{&cfg.TrafficRules}, "traffic-rule", "")
	fs.StringVar(&cfg.Role, "role", "", "")
	if err := fs.Parse([]string{"--traffic-rule", "name=a,throttle=10", "--traffic-rule", "name=b,encrypt=true"}); err != nil {
		t.Fatal(err)
	}
	if err := loadConfig(fs, file, &cfg); err != nil || len(cfg.TrafficRules) != 2 || cfg.TrafficRules[0].Name != "a" || cfg.TrafficRules[1].Name != "b" {
		t.Fatalf("flags must replace the file's rules: %+v %v", cfg.TrafficRules, err)
	}
}

// TestTrafficRulesEndToEnd: two target proxies on 127.0.0.2 (expects
// sealed points) and 127.0.0.3 (expects clear points); one rule encrypts
// toward the first, another throttles toward the second. A point with the
// wrong protection would be rejected by the target proxy and never
// acknowledged.
func TestTrafficRulesEndToEnd(t *testing.T) {
	for _, a := range []string{"127.0.0.2", "127.0.0.3"} {
		l, err := net.Listen("tcp", a+":0")
		if err != nil {
			t.Skipf("loopback address %s not usable: %v", a, err)
		}
		l.Close()
	}
	key := make([]byte, wire.KeySize)
	key[0] = 7
	targetKey, _ := wire.NewSealer(key)
	sourceKey, _ := wire.NewSealer(key)
	tlsConf := targetTLS(t)
	jopts := journal.Options{Sync: false}
	enc := newTargetRigAt(t, targetKey, jopts, "127.0.0.2:0", tlsConf)
	clear := newTargetRigAt(t, nil, jopts, "127.0.0.3:0", tlsConf)
	rules := []model.TrafficRule{
		{Name: "sealed", SourceCIDR: "127.0.0.0/8", TargetCIDR: "127.0.0.2/32", Encrypt: true},
		{Name: "slow", SourceCIDR: "127.0.0.0/8", TargetCIDR: "127.0.0.3/32", ThrottleBytesPerSec: 2 << 20},
	}
	run := func(rig *targetRig, vm string) *SourceProxy {
		addr := rig.addr
		p, err := NewSource(SourceConfig{
			DialTarget: func(ctx context.Context) (net.Conn, error) {
				d := tls.Dialer{Config: tlsConf}
				return d.DialContext(ctx, "tcp", addr)
			},
			RPO: 20 * time.Millisecond, CutBytes: 64 << 10, Codec: wire.CodecS2,
			// the defaults would encrypt and not throttle: only the rules
			// can make the second path clear and slow
			Sealer: sourceKey, Rules: rules,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go p.Serve(l)
		nc, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c := wire.NewConn(nc)
		defer c.Close()
		if err := c.Send(&wire.Hello{Role: wire.RoleSourceFilter, VM: vm, Disks: targetTestDisks}); err != nil {
			t.Fatal(err)
		}
		if ack, err := wire.Expect[*wire.HelloAck](c); err != nil || ack.Err != "" {
			t.Fatalf("hello ack %+v %v", ack, err)
		}
		buf := make([]byte, 16<<10)
		seq := uint64(0)
		for i := 0; i < 12; i++ {
			seq++
			for j := range buf {
				buf[j] = byte(i*31 + j*7)
			}
			if err := c.Send(&wire.Write{Seq: seq, Disk: 2000, Off: int64(i) * int64(len(buf)), Op: wire.OpData,
				Len: uint32(len(buf)), Flags: wire.FlagInitial, Data: buf}); err != nil {
				t.Fatal(err)
			}
		}
		seq++
		if err := c.Send(&wire.Marker{Seq: seq, Kind: wire.MarkerInitialSyncDone}); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 8; i++ {
			seq++
			if err := c.Send(&wire.Write{Seq: seq, Disk: 2001, Off: int64(i) * 4096, Op: wire.OpData, Len: 4096, Data: buf[:4096]}); err != nil {
				t.Fatal(err)
			}
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Second))
		for acked := uint64(0); acked < seq; {
			m, err := c.ReadMsg()
			if err != nil {
				t.Fatalf("vm %s: acknowledged %d of %d: %v", vm, acked, seq, err)
			}
			if a, ok := m.(*wire.Ack); ok {
				acked = a.Seq
			}
		}
		return p
	}
	pEnc := run(enc, "vm-a")
	pSlow := run(clear, "vm-b")

	for name, rig := range map[string]*targetRig{"sealed": enc, "clear": clear} {
		if n := counterValue(t, rig.proxy.m.points); n == 0 {
			t.Errorf("%s target: no points arrived", name)
		}
		if n := rejectedTotal(t, rig.reg); n != 0 {
			t.Errorf("%s target: %v frames rejected", name, n)
		}
	}
	if id := enc.vm("vm-a").LastID(); id == 0 {
		t.Error("sealed path: nothing durable")
	}
	if id := clear.vm("vm-b").LastID(); id == 0 {
		t.Error("clear path: nothing durable")
	}
	if st := pEnc.Status(); len(st) != 1 || st[0].Rule != "sealed" || !st[0].Encrypted {
		t.Errorf("sealed path status %+v", st)
	}
	if st := pSlow.Status(); len(st) != 1 || st[0].Rule != "slow" || st[0].Encrypted {
		t.Errorf("throttled path status %+v", st)
	}
	// every byte toward 127.0.0.3 went through the rule's bucket; the
	// sealed path has no bucket at all
	slow := pSlow.rules[1]
	wireBytes := counterValue(t, clear.proxy.m.wireBytes)
	if got := float64(slow.bucket.taken.Load()); got < wireBytes || wireBytes == 0 {
		t.Errorf("throttle bucket counted %v bytes, target received %v", got, wireBytes)
	}
	if pEnc.rules[0].bucket != nil || pEnc.bucket != nil || pSlow.rules[0].bucket != nil {
		t.Error("unexpected bucket on an unthrottled path")
	}
	if pEnc.rules[1].bucket.taken.Load() != 0 {
		t.Error("the sealed path's traffic was counted by the other rule's bucket")
	}
}

func rejectedTotal(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() == "continuum_target_proxy_rejected_total" {
			for _, m := range mf.GetMetric() {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}
