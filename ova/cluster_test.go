package ova

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// l2Switch is a learning Ethernet switch for qemu's socket netdev (TCP, each
// frame preceded by its length as 4 big-endian bytes). It joins the
// appliances' NICs into one network on loopback only.
type l2Switch struct {
	ln    net.Listener
	mu    sync.Mutex
	ports map[net.Conn]*sync.Mutex
	macs  map[string]net.Conn
}

func newSwitch(t *testing.T) *l2Switch {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &l2Switch{ln: ln, ports: map[net.Conn]*sync.Mutex{}, macs: map[string]net.Conn{}}
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		for c := range s.ports {
			c.Close()
		}
		s.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.ports[c] = &sync.Mutex{}
			s.mu.Unlock()
			go s.serve(c)
		}
	}()
	return s
}

func (s *l2Switch) addr() string { return s.ln.Addr().String() }

func (s *l2Switch) serve(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.ports, c)
		s.mu.Unlock()
		c.Close()
	}()
	hdr := make([]byte, 4)
	for {
		if _, err := io.ReadFull(c, hdr); err != nil {
			return
		}
		n := binary.BigEndian.Uint32(hdr)
		if n < 14 || n > 65536 {
			return
		}
		frame := make([]byte, 4+n)
		copy(frame, hdr)
		if _, err := io.ReadFull(c, frame[4:]); err != nil {
			return
		}
		dst, src := string(frame[4:10]), string(frame[10:16])
		s.mu.Lock()
		s.macs[src] = c
		var out []net.Conn
		if to, ok := s.macs[dst]; ok && frame[4]&1 == 0 {
			out = []net.Conn{to}
		} else {
			for p := range s.ports {
				out = append(out, p)
			}
		}
		locks := make([]*sync.Mutex, len(out))
		for i, p := range out {
			locks[i] = s.ports[p]
		}
		s.mu.Unlock()
		for i, p := range out {
			if p == c || locks[i] == nil {
				continue
			}
			locks[i].Lock()
			_, _ = p.Write(frame)
			locks[i].Unlock()
		}
	}
}

// TestBootThreeNodeCluster boots three appliances on one network: the first
// bootstraps a cluster and shows the join token on its console; the other
// two join with it. A fourth qemu without a guest bridges qemu's user-mode
// network (restricted, forwarding only the API ports) onto the switch, so
// the test reaches every node's /healthz.
func TestBootThreeNodeCluster(t *testing.T) {
	ova := ovaUnderTest(t)
	if os.Getenv("CONTINUUM_OVA_CLUSTER") == "" {
		t.Skip("CONTINUUM_OVA_CLUSTER is not set (make test-ova sets it)")
	}
	sw, ports, gw := bridgedNetwork(t, 8443, 8443, 8443)
	boot := func(i int, extra ...string) *vm {
		kv := append([]string{"role", "coordinator", "node_id", fmt.Sprintf("ova-%d", i+1)}, extra...)
		return bootOnSwitch(t, ova, sw, i, kv...)
	}
	start := time.Now()
	first := boot(0, "bootstrap", "true")
	took := waitHealthy(t, first, ports[0], `"Leader"`, 5*time.Minute, start)
	t.Logf("first node healthy leader after %v", took.Round(100*time.Millisecond))
	token := joinToken(t, first)

	start = time.Now()
	others := []*vm{
		boot(1, "join_address", "https://192.168.50.11:8443", "join_token", token),
		boot(2, "join_address", "https://192.168.50.11:8443", "join_token", token),
	}
	for i, v := range others {
		took := waitHealthy(t, v, ports[i+1], `"leader": "ova-1"`, 6*time.Minute, start)
		t.Logf("node ova-%d joined and follows ova-1 after %v", i+2, took.Round(100*time.Millisecond))
	}
	select {
	case <-gw.exited:
		t.Fatal("the network bridge exited")
	default:
	}
}

// bridgedNetwork starts the switch and the guest-less qemu that bridges a
// restricted user-mode network onto it, forwarding a free local port to
// port guestPorts[i] of 192.168.50.(11+i).
func bridgedNetwork(t *testing.T, guestPorts ...int) (*l2Switch, []int, *vm) {
	t.Helper()
	sw := newSwitch(t)
	ports := make([]int, len(guestPorts))
	user := "user,id=u,restrict=on,net=192.168.50.0/24,host=192.168.50.2"
	for i, gp := range guestPorts {
		ports[i] = freePort(t)
		user += fmt.Sprintf(",hostfwd=tcp:127.0.0.1:%d-192.168.50.%d:%d", ports[i], 11+i, gp)
	}
	gw := startQEMU(t, t.TempDir(), "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none",
		"-netdev", user, "-netdev", "socket,id=s,connect="+sw.addr(),
		"-netdev", "hubport,id=hu,hubid=0,netdev=u", "-netdev", "hubport,id=hs,hubid=0,netdev=s")
	return sw, ports, gw
}

// bootOnSwitch boots appliance i at 192.168.50.(11+i) with these properties.
func bootOnSwitch(t *testing.T, ova string, sw *l2Switch, i int, kv ...string) *vm {
	t.Helper()
	dir := t.TempDir()
	disk := extractDisk(t, ova, dir)
	kv = append([]string{"ip", fmt.Sprintf("192.168.50.%d", 11+i), "netmask", "24"}, kv...)
	iso := envISO(t, dir, props(kv...))
	return bootVMNet(t, disk, iso, "socket,id=n0,connect="+sw.addr(), fmt.Sprintf("52:54:00:00:50:%02x", 11+i))
}

// joinToken reads the join token the bootstrapped node shows on its console.
func joinToken(t *testing.T, v *vm) string {
	t.Helper()
	v.waitConsole(t, time.Minute, "join token:")
	b, _ := os.ReadFile(v.console)
	m := regexp.MustCompile(`join token:\s+(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("no join token on the first node's console")
	}
	return string(m[1])
}

// TestBootProxyAppliance deploys a coordinator and a target-proxy appliance:
// the proxy obtains its certificate from the coordinator with the join
// token and serves /healthz on its admin port.
func TestBootProxyAppliance(t *testing.T) {
	ova := ovaUnderTest(t)
	if os.Getenv("CONTINUUM_OVA_CLUSTER") == "" {
		t.Skip("CONTINUUM_OVA_CLUSTER is not set (make test-ova sets it)")
	}
	sw, ports, _ := bridgedNetwork(t, 8443, ProxyAdminPort)
	start := time.Now()
	coord := bootOnSwitch(t, ova, sw, 0, "role", "coordinator", "node_id", "ova-c", "bootstrap", "true")
	waitHealthy(t, coord, ports[0], `"Leader"`, 5*time.Minute, start)
	token := joinToken(t, coord)

	start = time.Now()
	proxy := bootOnSwitch(t, ova, sw, 1, "role", "proxy", "proxy_role", "target", "proxy_peer", "192.168.50.99:7400",
		"node_id", "ova-p", "join_address", "https://192.168.50.11:8443", "join_token", token)
	proxy.waitConsole(t, 5*time.Minute, "role: proxy (target)", "proxy certificate obtained from the cluster")
	hc := &http.Client{Timeout: 3 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/healthz", ports[1])
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := hc.Get(url)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				t.Logf("proxy healthy after %v: %s", time.Since(start).Round(100*time.Millisecond), strings.Join(strings.Fields(string(body)), " "))
				return
			}
			err = fmt.Errorf("status %s: %s", resp.Status, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("proxy /healthz: %v", err)
		}
		time.Sleep(time.Second)
	}
}
