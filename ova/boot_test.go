package ova

import (
	"archive/tar"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/netutil"
)

// The boot tests start the appliance's disk under qemu (software emulation)
// with an ISO carrying ovf-env.xml, as vSphere's ISO transport does. They
// need a built OVA: `make test-ova` builds one and sets CONTINUUM_OVA.

func ovaUnderTest(t *testing.T) string {
	path := os.Getenv("CONTINUUM_OVA")
	if path == "" {
		t.Skip("CONTINUUM_OVA is not set: run `make test-ova` to build the OVA and boot it")
	}
	for _, tool := range []string{"qemu-system-x86_64", "genisoimage"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for the boot test (make test-deps): %v", tool, err)
		}
	}
	return path
}

// extractDisk copies the OVA's VMDK into dir.
func extractDisk(t *testing.T, ova, dir string) string {
	t.Helper()
	f, err := os.Open(ova)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("no VMDK in %s: %v", ova, err)
		}
		if strings.HasSuffix(h.Name, ".vmdk") {
			out := filepath.Join(dir, "disk.vmdk")
			w, err := os.Create(out)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(w, tr); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return out
		}
	}
}

// envISO writes an ISO labelled OVF_ENV holding ovf-env.xml.
func envISO(t *testing.T, dir string, props map[string]string) string {
	t.Helper()
	src := filepath.Join(dir, "iso")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "ovf-env.xml"), EnvironmentXML(props), 0o644); err != nil {
		t.Fatal(err)
	}
	iso := filepath.Join(dir, "env.iso")
	if out, err := exec.Command("genisoimage", "-quiet", "-V", "OVF_ENV", "-r", "-J", "-o", iso, src).CombinedOutput(); err != nil {
		t.Fatalf("genisoimage: %v: %s", err, out)
	}
	return iso
}

func freePort(t *testing.T) int {
	t.Helper()
	addr, err := netutil.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(addr)
	n, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

type vm struct {
	cmd     *exec.Cmd
	console string
	exited  chan struct{}
}

// bootVM starts qemu; it is killed by PID when the test ends, however it
// ends, and dies with the test process (Pdeathsig) if that is killed.
func bootVM(t *testing.T, disk, iso string, fwd map[int]int) *vm {
	t.Helper()
	// restrict=on: the guest reaches nothing but its forwarded ports.
	netdev := "user,id=n0,net=10.0.2.0/24,restrict=on"
	for host, guest := range fwd {
		netdev += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-:%d", host, guest)
	}
	return bootVMNet(t, disk, iso, netdev, "52:54:00:12:34:56")
}

// bootVMNet boots the disk with the given netdev (id n0) behind a vmxnet3
// NIC with this MAC address.
func bootVMNet(t *testing.T, disk, iso, netdev, mac string) *vm {
	t.Helper()
	dir := filepath.Dir(disk)
	console := filepath.Join(dir, "console.log")
	v := startQEMU(t, dir, "-machine", "q35", "-accel", "tcg", "-m", "768", "-smp", "1",
		"-display", "none", "-monitor", "none", "-serial", "file:"+console,
		"-drive", "file="+disk+",format=vmdk,if=ide,snapshot=on",
		"-drive", "file="+iso+",format=raw,media=cdrom,readonly=on",
		"-netdev", netdev, "-device", "vmxnet3,netdev=n0,mac="+mac,
		"-no-reboot")
	v.console = console
	return v
}

// startQEMU starts qemu; it is killed by PID when the test ends, however it
// ends, and dies with the test process (Pdeathsig) if that is killed.
func startQEMU(t *testing.T, dir string, args ...string) *vm {
	t.Helper()
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		out.Close()
		t.Fatalf("start qemu: %v", err)
	}
	v := &vm{cmd: cmd, exited: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-v.exited
		out.Close()
		if t.Failed() {
			if v.console != "" {
				b, _ := os.ReadFile(v.console)
				t.Logf("guest console (%s):\n%s", dir, tail(string(b), 6000))
			}
			q, _ := os.ReadFile(out.Name())
			t.Logf("qemu output (%s):\n%s", dir, q)
		}
	})
	return v
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitConsole waits until the guest console shows every string of want.
func (v *vm) waitConsole(t *testing.T, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(v.console)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(string(b), w)
		}
		if ok {
			return
		}
		select {
		case <-v.exited:
			t.Fatal("qemu exited: the appliance went down")
		case <-time.After(500 * time.Millisecond):
		}
	}
	t.Fatalf("console did not show %q within %v", want, timeout)
}

func TestBootCoordinatorFromISO(t *testing.T) {
	ova := ovaUnderTest(t)
	dir := t.TempDir()
	disk := extractDisk(t, ova, dir)
	iso := envISO(t, dir, props("role", "coordinator", "node_id", "ova-1", "hostname", "ova-1.lab",
		"ip", "10.0.2.15", "netmask", "255.255.255.0", "gateway", "10.0.2.2", "dns", "10.0.2.3",
		"bootstrap", "True", "join_address", "", "join_token", "", "ntp", ""))
	port := freePort(t)
	start := time.Now()
	v := bootVM(t, disk, iso, map[int]int{port: 8443})

	took := waitHealthy(t, v, port, `"Leader"`, 4*time.Minute, start)
	t.Logf("boot to healthy leader: %v", took.Round(100*time.Millisecond))
	v.waitConsole(t, 10*time.Second, "role: coordinator", "node: ova-1", "address: 10.0.2.15 (static)", "data partition mounted")
}

func TestBootShowsBadProperties(t *testing.T) {
	ova := ovaUnderTest(t)
	dir := t.TempDir()
	disk := extractDisk(t, ova, dir)
	iso := envISO(t, dir, props("role", "coordinator", "node_id", "ova-2", "ip", "10.0.2.300", "netmask", "24",
		"bootstrap", "false", "join_address", "", "join_token", ""))
	v := bootVM(t, disk, iso, nil)
	v.waitConsole(t, 4*time.Minute, "configuration needs attention", `continuum.ip = "10.0.2.300": not an IPv4 address`,
		"continuum.join_address: required", "continuum.join_token: required")
	// The appliance stays up for the admin: nothing was started, nothing died.
	select {
	case <-v.exited:
		t.Fatal("the appliance powered off after reporting bad properties")
	case <-time.After(3 * time.Second):
	}
	b, _ := os.ReadFile(v.console)
	if strings.Contains(string(b), "starting") && strings.Contains(string(b), "process=\"continuum coordinator\"") {
		t.Error("the role was started despite bad properties")
	}
}

func TestBootRestartsDeadRole(t *testing.T) {
	ova := ovaUnderTest(t)
	dir := t.TempDir()
	disk := extractDisk(t, ova, dir)
	// A join through an address nobody answers on: the coordinator gives
	// up and exits, and the supervisor must start it again.
	iso := envISO(t, dir, props("role", "coordinator", "node_id", "ova-3", "ip", "10.0.2.15", "netmask", "24",
		"bootstrap", "false", "join_address", "https://10.0.2.2:9", "join_token", testToken))
	v := bootVM(t, disk, iso, nil)
	v.waitConsole(t, 5*time.Minute, "role: coordinator", "process exited; restarting", `process="continuum coordinator" run=2`)
	b, _ := os.ReadFile(v.console)
	if strings.Contains(string(b), strings.TrimSuffix(testToken, ".secret")+".secret") {
		t.Error("the console shows the join token")
	}
}

// waitHealthy polls a node's /healthz through a forwarded port until it
// answers 200 with want in its body, and returns the time since start.
func waitHealthy(t *testing.T, v *vm, port int, want string, timeout time.Duration, start time.Time) time.Duration {
	t.Helper()
	// The node's CA is created inside the guest; /healthz needs no trust in
	// it to prove the node runs.
	hc := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	defer hc.CloseIdleConnections()
	url := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var lastErr error
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(body), want) {
				t.Logf("%s: %s", url, strings.Join(strings.Fields(string(body)), " "))
				return time.Since(start)
			}
			err = fmt.Errorf("status %s: %s", resp.Status, body)
		}
		lastErr = err
		select {
		case <-v.exited:
			t.Fatal("qemu exited before the coordinator was healthy")
		case <-ctx.Done():
			t.Fatalf("%s did not answer %s within %v: %v", url, want, timeout, lastErr)
		case <-time.After(time.Second):
		}
	}
}
