package target

import (
	"bytes"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/internal/wire"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := NewRestorePointCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

func TestRestorePointCommand(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	pc, _ := dialService(t, s, "vm 1", testDisks) // a name that needs escaping
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(11, 11)), testDisks, 3, wire.CodecS2)
	api := "http://" + s.AdminAddr()

	out, err := runCmd(t, "list", "vm 1", "--filter-api", api)
	if err != nil {
		t.Fatal(err, out)
	}
	if !strings.Contains(out, "ID") || !strings.Contains(out, "long-term") || strings.Count(out, "short-term") != 3 {
		t.Fatalf("table:\n%s", out)
	}
	t.Setenv(EnvFilterAPI, api)
	out, err = runCmd(t, "list", "vm 1", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var pts []PointInfo
	if err := json.Unmarshal([]byte(out), &pts); err != nil || len(pts) != 4 || pts[3].ID != 5 {
		t.Fatalf("json list: %v %s", err, out)
	}

	file := filepath.Join(t.TempDir(), "disk.raw")
	if out, err = runCmd(t, "export", "vm 1", "--disk", "2000", "--point", "4", "--out", file, "-o", "json"); err != nil {
		t.Fatal(err, out)
	}
	got, _ := os.ReadFile(file)
	if !bytes.Equal(got, m.at[4][2000]) {
		t.Fatal("exported image differs from the model")
	}
	// An unlisted point fails and leaves no file behind.
	bad := filepath.Join(filepath.Dir(file), "bad.raw")
	if out, err = runCmd(t, "export", "vm 1", "--disk", "2000", "--point", "1", "--out", bad); err == nil {
		t.Fatalf("exported an unlisted point: %s", out)
	}
	if ents, _ := os.ReadDir(filepath.Dir(file)); len(ents) != 1 {
		t.Fatalf("left files behind: %v", ents)
	}

	out, err = runCmd(t, "serve", "vm 1", "--point", "5", "-o", "json")
	if err != nil {
		t.Fatal(err, out)
	}
	var sr ServeResult
	if err := json.Unmarshal([]byte(out), &sr); err != nil || len(sr.Exports) != 2 || !strings.HasPrefix(sr.Exports[0].URI, "nbd://127.0.0.1:") {
		t.Fatalf("serve: %v %s", err, out)
	}

	for _, args := range [][]string{
		{"export", "vm 1", "--point", "4", "--out", file},
		{"serve", "vm 1"},
		{"list", "vm 1", "-o", "yaml"},
		{"list"},
		{"list", "nope"},
	} {
		if out, err := runCmd(t, args...); err == nil {
			t.Errorf("%v succeeded: %s", args, out)
		}
	}
	t.Setenv(EnvFilterAPI, "")
	if _, err := runCmd(t, "list", "vm 1"); err == nil || !strings.Contains(err.Error(), EnvFilterAPI) {
		t.Fatalf("missing API: %v", err)
	}
}

func TestClientLongTermAndRetention(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(12, 12)), testDisks, 3, wire.CodecNone)
	c, err := NewClient("http://"+s.AdminAddr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	lt, err := c.LongTerm(ctx, "vm")
	if err != nil || lt.ID != 5 {
		t.Fatalf("long-term: %+v %v", lt, err)
	}
	if err := c.SetRetention(ctx, "vm", Window{ShortTerm: 1}); err != nil {
		t.Fatal(err)
	}
	vms, err := c.VMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].Retention.ShortTerm != 1 {
		t.Fatalf("vms: %+v %v", vms, err)
	}
	checkPoints(t, s, "vm", m)
	if _, err := c.LongTerm(ctx, "vm"); err == nil {
		t.Fatal("second long-term point with nothing new")
	}
	var re *RemoteError
	if _, err := c.Points(ctx, "missing"); err == nil || !errors.As(err, &re) || re.Status != 404 {
		t.Fatalf("missing vm: %v", err)
	}
	if _, err := NewClient("127.0.0.1:1", nil); err == nil {
		t.Fatal("URL without scheme accepted")
	}
}

func TestClientOverAdminTLS(t *testing.T) {
	ca, err := pki.NewCA("admin-ca")
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("filter", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	conf := pki.RaftServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert))
	s := startService(t, Config{JournalDir: t.TempDir(), AdminTLS: conf})
	dialService(t, s, "vm", testDisks)
	c, err := NewClient("https://"+s.AdminAddr(), &http.Client{Transport: &http.Transport{TLSClientConfig: conf}})
	if err != nil {
		t.Fatal(err)
	}
	if vms, err := c.VMs(t.Context()); err != nil || len(vms) != 1 {
		t.Fatalf("vms over TLS: %+v %v", vms, err)
	}
	// Without a client certificate the API is closed.
	plain, _ := NewClient("https://"+s.AdminAddr(), &http.Client{Transport: &http.Transport{TLSClientConfig: pki.ClientTLS(ca.Cert, nil)}})
	if _, err := plain.VMs(t.Context()); err == nil {
		t.Fatal("admin API answered a client without a certificate")
	}
}

func TestRestorePointCommandOverTLS(t *testing.T) {
	ca, _ := pki.NewCA("admin-ca")
	leaf, _ := ca.Issue("filter", []string{"127.0.0.1"}, time.Hour)
	s := startService(t, Config{JournalDir: t.TempDir(), AdminTLS: pki.RaftServerTLS(ca.Cert, leaf.TLSCertificate(ca.Cert))})
	pc, _ := dialService(t, s, "vm", testDisks)
	sendWorkload(t, pc, rand.New(rand.NewPCG(13, 13)), testDisks, 1, wire.CodecNone)
	dir := t.TempDir()
	client, _ := ca.Issue("operator", nil, time.Hour)
	keyPEM, _ := pki.KeyPEM(client.Key)
	files := map[string][]byte{"ca.pem": pki.CertPEM(ca.Cert), "c.pem": pki.CertPEM(client.Cert), "c.key": keyPEM}
	for n, b := range files {
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	api := "https://" + s.AdminAddr()
	out, err := runCmd(t, "list", "vm", "--filter-api", api, "--filter-cacert", filepath.Join(dir, "ca.pem"),
		"--filter-cert", filepath.Join(dir, "c.pem"), "--filter-key", filepath.Join(dir, "c.key"))
	if err != nil || strings.Count(out, "-term") != 2 {
		t.Fatalf("list over TLS: %v\n%s", err, out)
	}
	other, _ := pki.NewCA("other")
	if err := os.WriteFile(filepath.Join(dir, "other.pem"), pki.CertPEM(other.Cert), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := runCmd(t, "list", "vm", "--filter-api", api, "--filter-cacert", filepath.Join(dir, "other.pem"),
		"--filter-cert", filepath.Join(dir, "c.pem"), "--filter-key", filepath.Join(dir, "c.key")); err == nil {
		t.Fatal("trusted a filter signed by another CA")
	}
	if _, err := runCmd(t, "list", "vm", "--filter-api", api, "--filter-cert", filepath.Join(dir, "c.pem")); err == nil {
		t.Fatal("--cert without --key accepted")
	}
}

func TestRestorePointPurgeCommand(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	pc, _ := dialService(t, s, "vm 2", testDisks)
	sendWorkload(t, pc, rand.New(rand.NewPCG(12, 12)), testDisks, 1, wire.CodecNone)
	api := "http://" + s.AdminAddr()
	if out, err := runCmd(t, "purge", "vm 2", "--filter-api", api); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("purge without --yes: %v %s", err, out)
	}
	// still replicating (static configuration: the session is open)
	if out, err := runCmd(t, "purge", "vm 2", "--yes", "--filter-api", api); err == nil || !strings.Contains(err.Error(), "replicating") {
		t.Fatalf("purge of a vm with an open session: %v %s", err, out)
	}
	if _, ok := s.Store().VM("vm 2"); !ok {
		t.Fatal("a refused purge removed the journal")
	}
	pc.c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := runCmd(t, "purge", "vm 2", "--yes", "--filter-api", api)
		if err == nil {
			if !strings.Contains(out, "purged") {
				t.Fatalf("purge output: %s", out)
			}
			break
		}
		if !strings.Contains(err.Error(), "replicating") || time.Now().After(deadline) {
			t.Fatalf("purge after the session ended: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := s.Store().VM("vm 2"); ok {
		t.Fatal("purged vm still in the journal")
	}
}
