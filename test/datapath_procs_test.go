package test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/source"
)

// Helpers that run the continuum binary as real processes: the data path
// with one source filter, a source proxy, a target proxy and a target
// filter, all on loopback.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// continuumBinary builds cmd/continuum once per test process, or returns
// $CONTINUUM_TEST_BIN when set (a binary kept for a profiler to read).
func continuumBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CONTINUUM_TEST_BIN"); p != "" {
		return p
	}
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "continuum-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "continuum")
		out, err := exec.Command("go", "build", "-o", binPath, "../cmd/continuum").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("build continuum: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func needTools(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (scripts/test-deps.sh installs it): %v", tool, err)
		}
	}
}

// proc is one running process with its arguments, so it can be restarted.
type proc struct {
	t     testing.TB
	name  string
	args  []string
	log   string
	admin string
	cmd   *exec.Cmd
	out   *bufio.Scanner
	lines chan string
	done  chan struct{}
}

func startProc(t testing.TB, dir, name, admin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, log: filepath.Join(dir, name+".log"), admin: admin}
	p.start()
	t.Cleanup(func() { p.kill() })
	return p
}

func (p *proc) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(continuumBinary(p.t), p.args...)
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		p.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	p.cmd = cmd
	p.lines = make(chan string, 100)
	p.done = make(chan struct{})
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			fmt.Fprintln(logf, "stdout:", sc.Text())
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	p.waitHealthy()
}

func (p *proc) waitHealthy() {
	p.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			p.t.Fatalf("%s exited early; log:\n%s", p.name, tail(p.log))
		default:
		}
		resp, err := http.Get("http://" + p.admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("%s not healthy; log:\n%s", p.name, tail(p.log))
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

func (p *proc) restart() {
	p.t.Helper()
	p.kill()
	p.start()
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if n := 4000; len(b) > n && os.Getenv("DATAPATH_FULL_LOGS") == "" {
		b = b[len(b)-n:]
	}
	return string(b)
}

func getJSON(t testing.TB, url string, v any) error {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// filterStatus is the part of the source filter's /v1/status the tests read.
type filterStatus struct {
	VM            string `json:"vm"`
	Link          string `json:"link"`
	Status        string `json:"status"`
	Mode          string `json:"mode"`
	Seq           uint64 `json:"seq"`
	Acked         uint64 `json:"acked"`
	BufferEntries int    `json:"buffer_entries"`
	CBTEntries    int64  `json:"cbt_entries"`
	// ThrottledSeconds: guest writes' total wait for room in the buffer
	ThrottledWrites  int64   `json:"throttled_writes"`
	ThrottledSeconds float64 `json:"throttled_seconds"`
	Disks            []struct {
		Key  int32  `json:"key"`
		Path string `json:"path"`
	} `json:"disks"`
}

type pointInfo struct {
	ID   uint64 `json:"id"`
	Kind string `json:"kind"`
}

// datapath is a running static data path.
type datapath struct {
	t                                  testing.TB
	dir                                string
	tfilter, tproxy, sproxy, sfilter   *proc
	tfAdmin, tpAdmin, spAdmin, sfAdmin string
	nbdAddr                            string
	vms                                map[string][]int32
	certs, spData                      string
}

type dpOptions struct {
	encrypt bool
	// hostIntegrity: a traffic rule on both proxies lets the hops between
	// host filters and proxies carry integrity frames instead of TLS
	hostIntegrity bool
	grace         time.Duration
	rpo           time.Duration // default 300ms
	// vms replaces the default VMs (vm-a: 2000, 2001; vm-b: 2000)
	vms []source.VMConfig
	// noSourceFilter leaves the source filter to the caller (in-process)
	noSourceFilter bool
	logLevel       string
	// dir holds every process's data; default t.TempDir()
	dir string
}

func startDatapath(t testing.TB, o dpOptions) *datapath {
	t.Helper()
	bin := continuumBinary(t)
	dir := o.dir
	if dir == "" {
		dir = t.TempDir()
	}
	certs := filepath.Join(dir, "certs")
	if out, err := exec.Command(bin, "filter", "--gen-certs", certs).CombinedOutput(); err != nil {
		t.Fatalf("gen certs: %v\n%s", err, out)
	}
	tlsArgs := []string{"--cert", filepath.Join(certs, "cert.pem"), "--key", filepath.Join(certs, "key.pem"), "--ca", filepath.Join(certs, "ca.pem")}
	var proxyArgs []string
	if o.encrypt {
		proxyArgs = []string{"--encryption-key", filepath.Join(certs, "encryption.key")}
	}
	if o.hostIntegrity {
		// loopback is every hop here: the rule matches the hop between the
		// proxies too, where it keeps point sealing as configured
		proxyArgs = append(proxyArgs, "--traffic-rule", fmt.Sprintf("name=site,source=127.0.0.0/8,target=127.0.0.0/8,encrypt=%t,host_traffic=integrity", o.encrypt))
	}
	if o.rpo == 0 {
		o.rpo = 300 * time.Millisecond
	}
	if o.logLevel == "" {
		o.logLevel = "debug"
	}
	if o.vms == nil {
		o.vms = []source.VMConfig{
			{Name: "vm-a", Disks: []source.DiskConfig{{Key: 2000, Capacity: 48 << 20}, {Key: 2001, Capacity: 24 << 20}}},
			{Name: "vm-b", Disks: []source.DiskConfig{{Key: 2000, Capacity: 32 << 20}}},
		}
	}
	d := &datapath{t: t, dir: dir, vms: map[string][]int32{}, certs: certs}
	for _, vm := range o.vms {
		for _, dc := range vm.Disks {
			d.vms[vm.Name] = append(d.vms[vm.Name], dc.Key)
		}
	}
	tfData, tpData, spData := freeAddr(t), freeAddr(t), freeAddr(t)
	d.spData = spData
	d.tfAdmin, d.tpAdmin, d.spAdmin, d.sfAdmin = freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	d.nbdAddr = freeAddr(t)
	d.tfilter = startProc(t, dir, "target-filter", d.tfAdmin, append([]string{"filter", "--role", "target",
		"--listen", tfData, "--admin-addr", d.tfAdmin, "--nbd-addr", freeAddr(t),
		"--journal-dir", filepath.Join(dir, "target"), "--export-dir", dir}, tlsArgs...)...)
	d.tproxy = startProc(t, dir, "target-proxy", d.tpAdmin, append(append([]string{"proxy", "--role", "target",
		"--listen", tpData, "--admin-addr", d.tpAdmin, "--target-filter", tfData}, tlsArgs...), proxyArgs...)...)
	d.sproxy = startProc(t, dir, "source-proxy", d.spAdmin, append(append([]string{"proxy", "--role", "source",
		"--listen", spData, "--admin-addr", d.spAdmin, "--target", tpData, "--rpo", o.rpo.String(),
		"--spill-dir", filepath.Join(dir, "spill"), "--log-level", o.logLevel}, tlsArgs...), proxyArgs...)...)
	cfg := map[string]any{
		"role": "source", "datastore": filepath.Join(dir, "source"), "proxy": spData,
		"admin_addr": d.sfAdmin, "nbd_addr": d.nbdAddr, "grace": o.grace.String(), "buffer_bytes": 64 << 20,
		"vms": o.vms,
	}
	if o.noSourceFilter {
		return d
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(dir, "source-filter.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d.sfilter = startProc(t, dir, "source-filter", d.sfAdmin, append([]string{"filter", "--config", cfgPath}, tlsArgs...)...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{d.sfilter, d.sproxy, d.tproxy, d.tfilter} {
				if p == nil {
					continue
				}
				t.Logf("%s log:\n%s", p.name, tail(p.log))
			}
		}
	})
	d.waitQuiet(90 * time.Second)
	return d
}

// checkLinks checks what protects each hop: want ("tls" or "integrity")
// between the host filters and the proxies, TLS between the proxies.
func (d *datapath) checkLinks(want string) {
	d.t.Helper()
	for _, st := range d.status() {
		if st.Link != want {
			d.t.Errorf("source filter, %s: link to the source proxy is %q, want %q", st.VM, st.Link, want)
		}
	}
	var sp []struct {
		VM         string `json:"vm"`
		FilterLink string `json:"filter_link"`
	}
	if err := getJSON(d.t, "http://"+d.spAdmin+"/v1/status", &sp); err != nil {
		d.t.Fatal(err)
	}
	for _, st := range sp {
		if st.FilterLink != want {
			d.t.Errorf("source proxy, %s: link to the filter is %q, want %q", st.VM, st.FilterLink, want)
		}
	}
	for _, c := range []struct {
		p    *proc
		want string
	}{{d.tproxy, "source_link=tls filter_link=" + want}, {d.tfilter, "link=" + want}} {
		b, err := os.ReadFile(c.p.log)
		if err != nil {
			d.t.Fatal(err)
		}
		if !strings.Contains(string(b), c.want) {
			d.t.Errorf("%s log has no session with %s:\n%s", c.p.name, c.want, tail(c.p.log))
		}
	}
}

func (d *datapath) uri(vm string, disk int32) string {
	return fmt.Sprintf("nbd://%s/%s/%d", d.nbdAddr, vm, disk)
}

func (d *datapath) status() []filterStatus {
	var st []filterStatus
	if err := getJSON(d.t, "http://"+d.sfAdmin+"/v1/status", &st); err != nil {
		d.t.Fatalf("source filter status: %v", err)
	}
	return st
}

// waitQuiet waits until every write is durable at the target and every VM
// is syncing.
func (d *datapath) waitQuiet(timeout time.Duration) []filterStatus {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	var st []filterStatus
	for time.Now().Before(deadline) {
		st = d.status()
		ok := len(st) > 0
		for _, s := range st {
			if s.Mode != "syncing" || s.Acked != s.Seq || s.BufferEntries != 0 {
				ok = false
			}
		}
		if ok {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	d.t.Fatalf("data path not quiet after %s: %+v\nsource proxy log:\n%s", timeout, st, tail(d.sproxy.log))
	return nil
}

func (d *datapath) points(vm string) []pointInfo {
	d.t.Helper()
	var pts []pointInfo
	if err := getJSON(d.t, "http://"+d.tfAdmin+"/v1/vms/"+vm+"/points", &pts); err != nil {
		d.t.Fatalf("list points of %s: %v", vm, err)
	}
	return pts
}

// export writes the image of a disk at a point into a file.
func (d *datapath) export(vm string, disk int32, point uint64) string {
	d.t.Helper()
	url := fmt.Sprintf("http://%s/v1/vms/%s/points/%d/disks/%d/image", d.tfAdmin, vm, point, disk)
	resp, err := http.Get(url)
	if err != nil {
		d.t.Fatalf("export: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		d.t.Fatalf("export %s: %s: %s", url, resp.Status, b)
	}
	path := filepath.Join(d.dir, fmt.Sprintf("export-%s-%d-%d.raw", vm, disk, point))
	f, err := os.Create(path)
	if err != nil {
		d.t.Fatal(err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		d.t.Fatalf("export %s: %v", url, err)
	}
	f.Close()
	return path
}

func (d *datapath) sourcePath(vm string, disk int32) string {
	for _, s := range d.status() {
		if s.VM == vm {
			for _, dk := range s.Disks {
				if dk.Key == disk {
					return dk.Path
				}
			}
		}
	}
	d.t.Fatalf("no disk %s/%d", vm, disk)
	return ""
}

// checkLatest exports the latest listed point of every disk with
// `continuum restore-point export` and compares it with the source disk
// using qemu-img compare.
func (d *datapath) checkLatest() {
	d.t.Helper()
	for vm, disks := range d.vms {
		pts := d.points(vm)
		if len(pts) == 0 {
			d.t.Fatalf("%s: no listed point", vm)
		}
		last := pts[len(pts)-1].ID
		for _, k := range disks {
			// the latest point goes through the restore-point client command
			img := filepath.Join(d.dir, fmt.Sprintf("latest-%s-%d.raw", vm, k))
			run(d.t, continuumBinary(d.t), "restore-point", "export", vm, "--filter-api", "http://"+d.tfAdmin,
				"--disk", fmt.Sprint(k), "--point", fmt.Sprint(last), "--out", img)
			out, err := exec.Command("qemu-img", "compare", "-f", "raw", "-F", "raw", img, d.sourcePath(vm, k)).CombinedOutput()
			if err != nil {
				var sp, vms any
				getJSON(d.t, "http://"+d.spAdmin+"/v1/status", &sp)
				getJSON(d.t, "http://"+d.tfAdmin+"/v1/vms", &vms)
				d.t.Fatalf("%s disk %d: latest point %d differs from the source: %v\n%s\npoints %+v\nsource filter %+v\nsource proxy %+v\ntarget %+v",
					vm, k, last, err, out, pts, d.status(), sp, vms)
			}
			os.Remove(img)
		}
	}
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, _ := runState(t, name, args...)
	return out
}

// runState is run that also returns the ended process's state (its CPU
// times).
func runState(t testing.TB, name string, args ...string) (string, *os.ProcessState) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out), cmd.ProcessState
}
