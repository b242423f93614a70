package appliance

import (
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

func TestLabTableShowsEveryVM(t *testing.T) {
	now := time.Date(2026, 1, 2, 10, 0, 10, 0, time.UTC)
	v := &labView{
		At:     now,
		Policy: &model.Policy{Name: "demo", RPO: model.Duration(2 * time.Second)},
		Status: &client.PolicyStatus{Status: model.StatusInitialSync, Tasks: []*model.VMTask{
			{VMName: "app-002", Status: model.StatusInitialSync, SyncDoneBytes: 1 << 20, SyncTotalBytes: 4 << 20,
				SourceProxy: "px-v", TargetProxy: "px-gone"},
			{VMName: "app-001", Status: model.StatusSyncing, LagSeconds: 1.25, LastPointAt: now.Add(-3 * time.Second),
				SourceProxy: "px-p", TargetProxy: "px-v"},
			{VMName: "app-003", Status: model.StatusPending},
		}},
		Proxies: map[string]*model.Proxy{
			"px-p": {ID: "px-p", Name: "phys-src", Kind: model.KindPhysical},
			"px-v": {ID: "px-v", Name: "proxy-src-01", Kind: model.KindVM},
		},
	}
	var b strings.Builder
	renderLabTable(&b, v, labWorkloadStats{Writes: 10, Bytes: 3 << 20}, now)
	out := b.String()
	lines := strings.Split(out, "\n")
	if !strings.Contains(lines[0], "policy demo: Initial sync") {
		t.Fatalf("head line: %q", lines[0])
	}
	if !strings.HasPrefix(lines[1], "VM") || !strings.Contains(lines[1], "TARGET PROXY") {
		t.Fatalf("header: %q", lines[1])
	}
	// Sorted by VM name.
	for i, want := range [][]string{
		{"app-001", "Syncing", "100%", "2s", "1.2s", "(3s ago)", "phys-src (physical)", "proxy-src-01 (vm)"},
		{"app-002", "Initial sync", "25%", "proxy-src-01 (vm)", "px-gone"},
		{"app-003", "Pending", "-"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[2+i], w) {
				t.Errorf("row %d lacks %q: %q", i, w, lines[2+i])
			}
		}
	}
	if !strings.Contains(out, "workload: 10 writes, 3.0 MiB") {
		t.Errorf("no workload line:\n%s", out)
	}

	// A view kept from before the coordinators stopped answering says so.
	v.Err = errors.New("no leader")
	b.Reset()
	renderLabTable(&b, v, labWorkloadStats{}, now)
	if !strings.Contains(b.String(), "coordinators not answering") || !strings.Contains(b.String(), "app-001") {
		t.Fatalf("stale view:\n%s", b.String())
	}
	v.Err, v.NoLeader = nil, true
	b.Reset()
	renderLabTable(&b, v, labWorkloadStats{}, now)
	if !strings.Contains(b.String(), "no coordinator quorum") {
		t.Fatalf("no quorum not shown:\n%s", b.String())
	}
	b.Reset()
	renderLabTable(&b, &labView{Err: errors.New("policy not found")}, labWorkloadStats{}, now)
	if !strings.Contains(b.String(), "policy not found") {
		t.Fatalf("no policy:\n%s", b.String())
	}
}

func TestLabLayoutComponents(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lab.json")
	l, err := loadLabLayout(dir, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"proxy-a", "filter-h1", "filter-h2"}
	got, err := l.components(path, names)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, n := range l.Nodes {
		seen[n.API], seen[n.Raft] = true, true
	}
	for _, n := range names {
		c := got[n]
		addrs := []string{c.Listen, c.Admin}
		if strings.HasPrefix(n, "filter-") {
			addrs = append(addrs, c.NBD)
		} else if c.NBD != "" {
			t.Errorf("%s: a proxy got an NBD address", n)
		}
		for _, a := range addrs {
			if a == "" || seen[a] {
				t.Fatalf("%s: address %q empty or given twice (%v)", n, a, got)
			}
			seen[a] = true
		}
	}
	// Kept across a reload; a port taken meanwhile is replaced.
	ln, err := net.Listen("tcp", got["filter-h1"].NBD)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l2, err := loadLabLayout(dir, 3, false)
	if err != nil {
		t.Fatal(err)
	}
	again, err := l2.components(path, names)
	if err != nil {
		t.Fatal(err)
	}
	if again["proxy-a"] != got["proxy-a"] || again["filter-h2"] != got["filter-h2"] ||
		again["filter-h1"].Listen != got["filter-h1"].Listen {
		t.Fatalf("addresses changed across a reload:\n%v\n%v", got, again)
	}
	if a := again["filter-h1"].NBD; a == got["filter-h1"].NBD || a == "" {
		t.Fatalf("taken NBD port kept: %s", a)
	}
}
