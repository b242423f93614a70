package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/vcsim"
)

func TestCLIVMDisksAndRestorePoints(t *testing.T) {
	e := newEnv(t)
	image := bytes.Repeat([]byte{7}, 256<<10)
	f := newFakeFilter(t, e.ca, image)
	protectWeb(t, e, f)
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, pki.CertPEM(e.ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvAPI, e.url)
	t.Setenv(EnvToken, testAdmin)
	t.Setenv(EnvCACert, caPath)
	t.Setenv(target.EnvFilterAPI, "")

	out, err := runCLI(t, "vm", "disks", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var disks client.VMDisks
	if err := json.Unmarshal([]byte(out), &disks); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(disks.Disks) != 2 || disks.Disks[1].NBDURI != "nbd://127.0.0.1:10809/web/2001" {
		t.Fatalf("vm disks: %+v", disks)
	}
	out, err = runCLI(t, "vm", "disks", "web")
	if err != nil || !strings.Contains(out, "KEY") || !strings.Contains(out, "nbd://127.0.0.1:10809/web/2000") {
		t.Fatalf("vm disks table (%v):\n%s", err, out)
	}
	if _, err := runCLI(t, "vm", "disks", "nope"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("unknown VM: %v", err)
	}

	out, err = runCLI(t, "restore-point", "list", "web", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var pts []client.RestorePointInfo
	if err := json.Unmarshal([]byte(out), &pts); err != nil || len(pts) != 2 || pts[1].ID != 2 {
		t.Fatalf("restore-point list: %v %+v\n%s", err, pts, out)
	}

	img := filepath.Join(t.TempDir(), "web.img")
	out, err = runCLI(t, "restore-point", "export", "web", "--disk", "2000", "--point", "2", "--out", img, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var res ExportResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Bytes != int64(len(image)) || res.Path != img {
		t.Fatalf("export result %v %+v", err, res)
	}
	if got, _ := os.ReadFile(img); !bytes.Equal(got, image) {
		t.Fatal("exported image differs")
	}
	if _, err := runCLI(t, "restore-point", "export", "web", "--disk", "2000", "--out", img); err == nil || !strings.Contains(err.Error(), "--point") {
		t.Fatalf("missing --point: %v", err)
	}

	// --filter-api talks to a filter directly (here a plain-HTTP one).
	direct := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/vms/db/points" {
			http.NotFound(w, r)
			return
		}
		_ = json.NewEncoder(w).Encode([]target.PointInfo{{ID: 41, Time: time.Unix(1, 0), Kind: model.PointShortTerm}})
	}))
	defer direct.Close()
	out, err = runCLI(t, "restore-point", "list", "db", "--filter-api", direct.URL, "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &pts); err != nil || len(pts) != 1 || pts[0].ID != 41 {
		t.Fatalf("direct list: %v %+v", err, pts)
	}
}

func TestFilterInstallThroughTheAPI(t *testing.T) {
	ctx := context.Background()
	lab, err := vcsim.Start(ctx, vcsim.Options{ProtectedVMs: 1, ProxyVMs: -1}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lab.Close)
	var conn *controllers.Connector
	e := newEnv(t, func(c *ServerConfig) {
		conn = &controllers.Connector{Store: c.Store, Unseal: c.Store.Unseal, Dir: t.TempDir()}
		c.Installers = func(ctx context.Context, id string) (FilterInstaller, error) {
			inv, err := conn.Get(ctx, id)
			if err != nil {
				return nil, err
			}
			return inv.(FilterInstaller), nil
		}
	})
	t.Cleanup(func() { conn.Close(context.Background()) })
	if _, err := e.cl.AddVCenter(ctx, client.VCenterRequest{Name: "lab", URL: lab.SDKURL(),
		Username: vcsim.Username, Password: vcsim.Password, Insecure: true}); err != nil {
		t.Fatal(err)
	}
	before := e.snapshot(t)
	if _, err := e.cl.InstallFilter(ctx, client.FilterInstallRequest{Cluster: "no-such-cluster"}); err == nil || !strings.Contains(err.Error(), "no-such-cluster") {
		t.Fatalf("unknown cluster: %v", err)
	}
	if e.snapshot(t) != before {
		t.Fatal("a refused install changed the state")
	}
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, pki.CertPEM(e.ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "filter", "install", "--cluster", vcsim.TargetClusterName, "-o", "json",
		"--api", e.url, "--token", testAdmin, "--cacert", caPath)
	if err != nil {
		t.Fatal(err)
	}
	var cl model.Cluster
	if err := json.Unmarshal([]byte(out), &cl); err != nil || cl.Name != vcsim.TargetClusterName || cl.FilterState != model.FilterInstalled || cl.StorageProfileID == "" {
		t.Fatalf("install: %v %+v", err, cl)
	}
	inv, err := conn.Get(ctx, cl.VCenterID)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := inv.FilterInstalled(ctx, cl.MoRef); err != nil || !ok {
		t.Fatalf("vCenter says installed=%v (%v)", ok, err)
	}
	clusters, err := e.cl.ListClusters(ctx)
	if err != nil || len(clusters) != 1 || clusters[0].ID != cl.ID {
		t.Fatalf("clusters %v %+v", err, clusters)
	}
	// Installing again is harmless.
	if _, err := e.cl.InstallFilter(ctx, client.FilterInstallRequest{VCenterID: "lab", Cluster: cl.MoRef}); err != nil {
		t.Fatal(err)
	}
}
