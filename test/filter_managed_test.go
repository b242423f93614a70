package test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/vcsim"
)

// TestFilterManaged: managed filters against real coordinators. Their
// first heartbeats create their hosts with the addresses they serve on; a
// task in the configuration gets its VM exported over NBD on its source
// host's filter and streamed to the replica's host. With every coordinator
// down, filters restarted run their cached configuration: the export is
// back and a write reaches the target journal, byte-exact.
func TestFilterManaged(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	o := startOrchestra(t, 1)
	ctx := context.Background()

	hosts, err := o.cl.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	admin := map[string]string{} // host name -> admin address
	for _, h := range hosts {
		if nbd, ok := o.nbd[h.Name]; ok {
			if h.FilterNBD != nbd || h.FilterAdmin == "" || h.FilterAddr == "" || h.ID != o.vc.ID+"/"+h.MoRef {
				t.Fatalf("host %s as its filter created it: %+v", h.Name, h)
			}
			admin[h.Name] = h.FilterAdmin
		}
	}
	if len(admin) != len(o.nbd) {
		t.Fatalf("hosts %d of %d filters", len(admin), len(o.nbd))
	}

	vm := vcsim.ProtectedVMName(0)
	p := o.policy("managed-filter", []string{vm}, 0)
	o.waitSyncing(p, 3*time.Minute)
	out, err := o.cluster.cli(o.cluster.nodes[0].url(), "vm", "disks", vm, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var disks client.VMDisks
	if err := json.Unmarshal([]byte(out), &disks); err != nil || len(disks.Disks) == 0 {
		t.Fatalf("vm disks %s: %v\n%s", vm, err, out)
	}
	d := disks.Disks[0]
	u, err := url.Parse(d.NBDURI)
	if err != nil {
		t.Fatal(err)
	}
	srcHost := ""
	for name, addr := range o.nbd {
		if addr == u.Host {
			srcHost = name
		}
	}
	if srcHost == "" || !strings.HasPrefix(srcHost, "src-") {
		t.Fatalf("%s is exported on %s, not on a source host's filter %v", vm, u.Host, o.nbd)
	}
	dstAdmin := admin[vcsim.TargetHostName(0)]

	hc := o.nodeHTTP()
	// latestEqual waits until the newest point of the replica reads as the
	// source disk does through its NBD export.
	latestEqual := func(what string) {
		t.Helper()
		src := filepath.Join(o.root, "source.raw")
		run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", d.NBDURI, src)
		want, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		o.eventually(what, 60*time.Second, func() error {
			var pts []target.PointInfo
			if err := adminGet(hc, fmt.Sprintf("https://%s/v1/vms/%s/points", dstAdmin, vm), &pts); err != nil {
				return err
			}
			if len(pts) == 0 {
				return fmt.Errorf("no point of %s", vm)
			}
			last := pts[len(pts)-1].ID
			var img []byte
			if err := adminGet(hc, fmt.Sprintf("https://%s/v1/vms/%s/points/%d/disks/%d/image", dstAdmin, vm, last, d.Key), &img); err != nil {
				return err
			}
			if !bytes.Equal(img, want) {
				return fmt.Errorf("point %d differs from the source", last)
			}
			return nil
		})
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "flush", d.NBDURI)
	latestEqual("the first write at the target")

	// no coordinator at all; the filters restart on their cached configuration
	for _, n := range o.cluster.nodes {
		n.kill()
	}
	for name, pr := range o.procs {
		if strings.HasPrefix(name, "filter-") {
			pr.kill()
			pr.start()
		}
	}
	o.eventually("the export back after the restart", 60*time.Second, func() error {
		out, err := execOut("qemu-io", "-f", "raw", "-c", "write -P 0x6b 128k 64k", "-c", "flush", d.NBDURI)
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	latestEqual("the write after the restart at the target")
	for name, pr := range o.procs {
		if strings.HasPrefix(name, "filter-") && !strings.Contains(pr.logTail(), "heartbeat failed; the running configuration stays") {
			t.Fatalf("%s did not run without a coordinator:\n%s", name, pr.logTail())
		}
	}
	st, err := os.Stat(filepath.Join(o.root, "state", "filter-"+srcHost, "config.json"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("cached configuration of %s: %v %v", srcHost, err, st)
	}
}

// nodeHTTP is an HTTPS client for the filters' admin APIs, which take a
// coordinator's certificate, not a component's: it presents the first
// node's.
func (o *orchestra) nodeHTTP() *http.Client {
	o.t.Helper()
	node, err := tls.LoadX509KeyPair(filepath.Join(o.cluster.nodes[0].data, "node.pem"), filepath.Join(o.cluster.nodes[0].data, "node-key.pem"))
	if err != nil {
		o.t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true, Certificates: []tls.Certificate{node}}}}
	o.t.Cleanup(hc.CloseIdleConnections)
	return hc
}

// TestPolicyDeleteWithReplicas: `policy delete --delete-replicas` of a
// syncing policy: the replica VM leaves vCenter, the journal leaves the
// target filter (once the filter no longer replicates the VM), and the
// coordinator forgets both.
func TestPolicyDeleteWithReplicas(t *testing.T) {
	o := startOrchestra(t, 1)
	ctx := context.Background()
	vm := vcsim.ProtectedVMName(0)
	p := o.policy("doomed", []string{vm}, 0)
	o.waitSyncing(p, 3*time.Minute)
	o.checkReplicas(p)
	dstAdmin := ""
	hosts, err := o.cl.ListHosts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hosts {
		if h.Name == vcsim.TargetHostName(0) {
			dstAdmin = h.FilterAdmin
		}
	}
	hc := o.nodeHTTP()
	points := "https://" + dstAdmin + "/v1/vms/" + vm + "/points"
	var pts []target.PointInfo
	if err := adminGet(hc, points, &pts); err != nil || len(pts) == 0 {
		t.Fatalf("points of %s on the target filter: %v %v", vm, pts, err)
	}

	if out, err := o.cluster.cli(o.cluster.nodes[0].url(), "policy", "delete", "doomed", "--delete-replicas"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	o.eventually("the replica and its journal deleted", 90*time.Second, func() error {
		if n := o.replicaVMs(p.ID); n != 0 {
			return fmt.Errorf("%d replica VMs of the policy left in vCenter", n)
		}
		if err := adminGet(hc, points, &pts); err == nil || !strings.Contains(err.Error(), " 404 ") {
			return fmt.Errorf("the journal of %s is still on the target filter: %v", vm, err)
		}
		return nil
	})
	if err := adminGet(hc, "https://"+dstAdmin+"/v1/vms", &[]target.VMInfo{}); err != nil {
		t.Fatal(err)
	}
}

func execOut(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// adminGet reads a JSON body (or the raw body into a *[]byte).
func adminGet(hc *http.Client, u string, v any) error {
	resp, err := hc.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", u, resp.StatusCode, b)
	}
	if raw, ok := v.(*[]byte); ok {
		*raw = b
		return nil
	}
	return json.Unmarshal(b, v)
}
