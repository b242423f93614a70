package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// runCLI runs the command tree with args and returns stdout and the error.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func TestCLIValidatesBeforeCalling(t *testing.T) {
	for _, k := range []string{EnvAPI, EnvToken, EnvCACert} {
		t.Setenv(k, "")
	}
	// The API address points nowhere: every case must fail before a call.
	conn := []string{"--api", "https://127.0.0.1:1", "--token", "t", "--cacert", "/nonexistent"}
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"cluster", "status"}, "no coordinator given"},
		{[]string{"cluster", "status", "--api", "https://x:1"}, "no token given"},
		{[]string{"cluster", "status", "--api", "https://x:1", "--token", "t"}, "no CA certificate given"},
		{append([]string{"cluster", "status", "-o", "yaml"}, conn...), "-o: want table or json"},
		{append([]string{"cluster", "token", "create", "--role", "admin"}, conn...), "--role"},
		{append([]string{"policy", "create", "p", "--vcenter", "v", "--vm", "vm-1", "--target-cluster", "c", "--target-datastore", "d", "--rpo", "0s"}, conn...), "--rpo: must be positive"},
		{append([]string{"policy", "create", "p", "--rpo", "soon"}, conn...), "not a duration"},
		{append([]string{"policy", "create", "p", "--vcenter", "v", "--vm", "vm-1", "--target-cluster", "c", "--target-datastore", "d", "--rpo", "1m", "--short-term-retention", "10s"}, conn...), "--short-term-retention"},
		{append([]string{"policy", "create", "p", "--vcenter", "v", "--target-cluster", "c", "--target-datastore", "d", "--rpo", "1m"}, conn...), "--vm"},
		{append([]string{"policy", "edit", "p"}, conn...), "nothing to change"},
		{append([]string{"proxy", "add", "--name", "x", "--role", "sideways", "--address", "h:1"}, conn...), "--role"},
		{append([]string{"proxy", "add", "--name", "x", "--address", "nowhere"}, conn...), "--address"},
		{append([]string{"vcenter", "add", "--name", "v", "--url", "ftp://x", "--username", "u", "--password", "p"}, conn...), "--url"},
		{append([]string{"drill", "ha", "--writes", "0"}, conn...), "--writes"},
		{[]string{"coordinator", "--node-id", "n", "--data-dir", t.TempDir(), "--api-addr", "127.0.0.1:0", "--raft-addr", "127.0.0.1:1"}, "--api-addr"},
		{[]string{"coordinator", "--node-id", "n", "--data-dir", t.TempDir(), "--api-addr", "127.0.0.1:2", "--raft-addr", "127.0.0.1:1", "--join", "https://x:1", "--join-token", "abc"}, "--join-token"},
		{[]string{"coordinator", "--node-id", "n", "--data-dir", t.TempDir(), "--api-addr", "127.0.0.1:2", "--raft-addr", "127.0.0.1:1"}, "--bootstrap"},
	}
	for _, tc := range cases {
		_, err := runCLI(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want it to mention %q", tc.args, err, tc.want)
		}
	}
}

func TestCLIAgainstServer(t *testing.T) {
	e := newEnv(t)
	caPath := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caPath, pki.CertPEM(e.ca.Cert), 0o644); err != nil {
		t.Fatal(err)
	}
	// Connection settings from the environment.
	t.Setenv(EnvAPI, e.url)
	t.Setenv(EnvToken, testAdmin)
	t.Setenv(EnvCACert, caPath)
	if _, err := runCLI(t, "vcenter", "add", "--name", "vc1", "--url", "https://vc/sdk", "--username", "u", "--password", "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "proxy", "add", "--name", "px-a", "--role", "source", "--address", "127.0.0.1:7000"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "proxy", "add", "--name", "px-b", "--role", "target", "--address", "127.0.0.1:7001"); err != nil {
		t.Fatal(err)
	}
	spec := filepath.Join(t.TempDir(), "p.json")
	os.WriteFile(spec, []byte(policyJSON(func(m map[string]any) { m["name"] = "from-file" })), 0o644)
	if _, err := runCLI(t, "policy", "create", "-f", spec, "--rpo", "20s"); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, "policy", "create", "manual", "--vcenter", "vc1", "--vm", "vm-7", "--target-cluster", "c",
		"--target-datastore", "d", "--rpo", "10s", "--source-proxy", "px-a", "--target-proxy", "px-b"); err != nil {
		t.Fatal(err)
	}
	out, err := runCLI(t, "policy", "list")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "ID ") {
		t.Fatalf("policy list table:\n%s", out)
	}
	// Columns are aligned: the NAME column starts at the same offset.
	col := strings.Index(lines[0], "NAME")
	for _, l := range lines[1:] {
		if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
			t.Fatalf("misaligned table:\n%s", out)
		}
	}
	out, err = runCLI(t, "policy", "show", "from-file", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var p model.Policy
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.RPO.String() != "20s" {
		t.Fatalf("flag over file: %v %s", err, out)
	}
	out, err = runCLI(t, "policy", "show", "manual", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.ProxySelection != model.SelectManual || len(p.SourceProxies) != 1 {
		t.Fatalf("manual policy: %v %s", err, out)
	}
	// A server-side refusal comes back with its code.
	_, err = runCLI(t, "policy", "create", "manual", "--vcenter", "vc1", "--vm", "vm-7", "--target-cluster", "c",
		"--target-datastore", "d", "--rpo", "10s")
	if err == nil || !strings.Contains(err.Error(), model.CodeConflict) {
		t.Fatalf("duplicate name: %v", err)
	}
	if _, err := runCLI(t, "policy", "edit", "manual", "--pre-point-hook", "sync; fsfreeze -f /data"); err != nil {
		t.Fatal(err)
	}
	out, _ = runCLI(t, "policy", "show", "manual", "-o", "json")
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.PrePointHook != "sync; fsfreeze -f /data" || len(p.SourceProxies) != 1 {
		t.Fatalf("pre-point hook after edit: %v %s", err, out)
	}
	for _, args := range [][]string{
		{"policy", "disable", "manual"}, {"policy", "enable", "manual"}, {"policy", "status", "manual"},
		{"policy", "edit", "manual", "--rpo-warning", "30s"}, {"policy", "delete", "manual", "--delete-replicas"},
		{"proxy", "list"}, {"vcenter", "list"}, {"cluster", "status"},
		{"cluster", "token", "create", "--role", "component"},
	} {
		if out, err := runCLI(t, args...); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	tokFile := filepath.Join(t.TempDir(), "admin.token")
	os.WriteFile(tokFile, []byte(testAdmin+"\n"), 0o600)
	if _, err := runCLI(t, "cluster", "status", "--token", "@"+tokFile); err != nil {
		t.Fatalf("token from file: %v", err)
	}
	cl, _ := client.New(e.url, testAdmin, pki.CertPEM(e.ca.Cert))
	doc, err := cl.OpenAPI(context.Background())
	if err != nil || doc["openapi"] == nil {
		t.Fatalf("openapi through the client: %v", err)
	}
	jr, err := cl.Join(context.Background(), client.JoinRequest{NodeID: "n9", APIAddr: "127.0.0.1:9", RaftAddr: "127.0.0.1:10"})
	if err != nil || jr.ClusterID == "" || jr.NodeCert == "" {
		t.Fatalf("join through the client: %v", err)
	}
	out, _ = runCLI(t, "cluster", "token", "create", "--role", "join")
	if _, _, err := parseJoinToken(strings.TrimSpace(out)); err != nil {
		t.Fatalf("join token %q: %v", out, err)
	}
}
