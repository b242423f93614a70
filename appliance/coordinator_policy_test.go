package appliance

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/vcsim"
)

// waitStatus polls a policy's status until ok accepts it.
func waitStatus(t *testing.T, cl *client.Client, id, what string, ok func(*client.PolicyStatus) bool) *client.PolicyStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last *client.PolicyStatus
	for {
		st, err := cl.PolicyStatus(context.Background(), id)
		if err == nil {
			last = st
			if ok(st) {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; last status %+v (err %v)", what, describe(last), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func describe(st *client.PolicyStatus) string {
	if st == nil {
		return "none"
	}
	var b strings.Builder
	b.WriteString(string(st.Status) + " " + st.Reason)
	for _, tk := range st.Tasks {
		b.WriteString("\n  " + tk.VMName + ": " + string(tk.Status) + " " + tk.Reason)
	}
	return b.String()
}

func allTasks(st *client.PolicyStatus, n int, ok func(*model.VMTask) bool) bool {
	if len(st.Tasks) != n {
		return false
	}
	for _, tk := range st.Tasks {
		if !ok(tk) {
			return false
		}
	}
	return true
}

// The coordinator runs the reconciler on its leader: a new policy is
// configured up to what its components allow, its status names what is
// missing (proxies, then the hosts' filters), and once every component
// reports, the tasks are handed to the data path and each filter's config
// lists them.
func TestCoordinatorConfiguresPolicies(t *testing.T) {
	ctx := context.Background()
	lab, err := vcsim.Start(ctx, vcsim.Options{ProtectedVMs: 2, ProxyVMs: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	dir := t.TempDir()
	api := freeAddr(t)
	runNode(t, CoordinatorOptions{NodeID: "n1", DataDir: dir, APIAddr: api, RaftAddr: freeAddr(t), Bootstrap: true,
		HeartbeatTimeout: 5 * time.Second})
	tok, err := os.ReadFile(filepath.Join(dir, FileAdminToken))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, FileCA))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.New("https://"+api, strings.TrimSpace(string(tok)), ca)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	vc, err := cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: lab.SDKURL(), Username: vcsim.Username, Password: vcsim.Password, Insecure: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{vcsim.SourceClusterName, vcsim.TargetClusterName} {
		if _, err := cl.InstallFilter(ctx, client.FilterInstallRequest{Cluster: c}); err != nil {
			t.Fatal(err)
		}
	}
	src, err := cl.CreateProxy(ctx, &model.Proxy{Name: "src", Role: model.RoleSource, Kind: model.KindPhysical, Address: "127.0.0.1:7001", MaxTasks: 8})
	if err != nil {
		t.Fatal(err)
	}
	dst, err := cl.CreateProxy(ctx, &model.Proxy{Name: "dst", Role: model.RoleTarget, Kind: model.KindPhysical, Address: "127.0.0.1:7002", MaxTasks: 8})
	if err != nil {
		t.Fatal(err)
	}
	p, err := cl.CreatePolicy(ctx, &model.Policy{Name: "gold", VCenterID: vc.ID, Enabled: true,
		VMs:    []model.VMRef{{Name: vcsim.ProtectedVMName(0)}, {Name: vcsim.ProtectedVMName(1)}},
		Target: model.Target{VCenterID: vc.ID, Cluster: vcsim.TargetClusterName, Datastore: vcsim.TargetDatastoreName(0)},
		RPO:    model.Duration(5 * time.Second), ShortTermRetention: model.Duration(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}

	// No proxy has reported: the status says so.
	waitStatus(t, cl, p.ID, "the dead proxies named", func(st *client.PolicyStatus) bool {
		return st.Status == model.StatusError && strings.Contains(st.Reason, "no source proxy is alive")
	})

	// Proxies report; the hosts' filters do not yet.
	hbCtx, stopHB := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopHB()
	var hostsMu sync.Mutex
	hosts := map[string]bool{}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for hbCtx.Err() == nil {
			for _, id := range []string{src.ID, dst.ID} {
				_, _ = cl.ProxyHeartbeat(hbCtx, id)
			}
			hostsMu.Lock()
			for h := range hosts {
				_, _ = cl.ComponentHeartbeat(hbCtx, model.ComponentReport{Kind: model.ComponentFilter, ID: h,
					DataAddr: "127.0.0.1:7100", AdminAddr: "127.0.0.1:7101", NBDAddr: "127.0.0.1:7102"})
			}
			hostsMu.Unlock()
			select {
			case <-hbCtx.Done():
			case <-time.After(500 * time.Millisecond):
			}
		}
	}()
	st := waitStatus(t, cl, p.ID, "replicas made and the silent filters named", func(st *client.PolicyStatus) bool {
		return allTasks(st, 2, func(tk *model.VMTask) bool {
			return tk.ReplicaID != "" && tk.TargetHost != "" && tk.Status == model.StatusError &&
				strings.Contains(tk.Reason, "filter of source host") && strings.Contains(tk.Reason, "never reported")
		})
	})
	hostsMu.Lock()
	for _, tk := range st.Tasks {
		for _, h := range []string{tk.SourceHost, tk.TargetHost} {
			hosts[strings.TrimPrefix(h, vc.ID+"/")] = true
		}
	}
	hostsMu.Unlock()

	// Every component reports: the tasks go to the data path.
	st = waitStatus(t, cl, p.ID, "tasks handed to the data path", func(st *client.PolicyStatus) bool {
		return allTasks(st, 2, func(tk *model.VMTask) bool { return tk.Status == model.StatusInitialSync && tk.Reason == "" })
	})
	for _, tk := range st.Tasks {
		cfg, err := cl.ComponentHeartbeat(ctx, model.ComponentReport{Kind: model.ComponentFilter, ID: strings.TrimPrefix(tk.SourceHost, vc.ID+"/")})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, tp := range cfg.Tasks {
			if tp.TaskID == tk.ID && tp.VM == tk.VMName && len(tp.Disks) == len(tk.Disks) && len(tp.Key) == 32 {
				found = true
			}
		}
		if !found {
			t.Fatalf("the source filter's config %+v lacks task %s", cfg.Tasks, tk.ID)
		}
		disks, err := cl.VMDisks(ctx, tk.VMName)
		if err != nil || len(disks.Disks) != len(tk.Disks) || !strings.HasPrefix(disks.Disks[0].NBDURI, "nbd://127.0.0.1:7102/"+tk.VMName+"/") {
			t.Fatalf("vm disks of %s: %+v %v", tk.VMName, disks, err)
		}
	}

	// The leader's controllers report to the node's /metrics.
	req, _ := http.NewRequest(http.MethodGet, "https://"+api+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	caCert, err := pki.ParseCertPEM(ca)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(caCert, nil)}}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`continuum_reconcile_total{controller="policy",result="error"}`, `continuum_reconcile_total{controller="policy",result="success"}`, "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Fatalf("/metrics lacks %s:\n%s", want, body)
		}
	}

	// Disabling is reflected at once (the write wakes the reconciler).
	if _, err := cl.DisablePolicy(ctx, p.ID); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, cl, p.ID, "disabled", func(st *client.PolicyStatus) bool {
		return !st.Enabled && allTasks(st, 2, func(tk *model.VMTask) bool { return tk.Generation == 0 })
	})
}
