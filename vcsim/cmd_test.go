package vcsim

import (
	"bufio"
	"context"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmware/govmomi"
)

func TestVcsimCommand(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	cmd := Commands()[0]
	cmd.SetArgs([]string{"--listen", "127.0.0.1:0", "--dir", dir, "--vms", "2", "--source-hosts", "2"})
	cmd.SetOut(pw)
	cmd.SetErr(io.Discard)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx); _ = pw.Close() }()

	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	select {
	case l := <-lines:
		if l != "vcsim ready" {
			t.Fatalf("first line %q", l)
		}
	case err := <-done:
		t.Fatalf("command ended: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("no ready line")
	}

	env, err := os.ReadFile(filepath.Join(dir, "vcsim.env"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(env)), "\n") {
		k, v, ok := strings.Cut(strings.TrimPrefix(l, "export "), "=")
		if !ok {
			t.Fatalf("bad env line %q", l)
		}
		vars[k] = strings.Trim(v, "'")
	}
	if vars["GOVC_INSECURE"] != "1" || vars["CONTINUUM_VCSIM_DATASTORES"] != filepath.Join(dir, "datastores") {
		t.Fatalf("env %v", vars)
	}
	u, err := url.Parse(vars["GOVC_URL"])
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(vars["GOVC_USERNAME"], vars["GOVC_PASSWORD"])
	c, err := govmomi.NewClient(ctx, u, true)
	if err != nil {
		t.Fatalf("log in with the env file: %v", err)
	}
	_ = c.Logout(ctx)
	if _, err := os.Stat(filepath.Join(dir, "datastores", SourceDatastoreName(1), ProtectedVMName(1))); err != nil {
		t.Fatalf("VM directory on the datastore: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("command: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("command did not stop")
	}
}

func TestVcsimCommandNeedsListen(t *testing.T) {
	cmd := Commands()[0]
	cmd.SetArgs([]string{"--dir", t.TempDir()})
	cmd.SetOut(io.Discard)
	cmd.SetErr(io.Discard)
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "--listen") {
		t.Fatalf("got %v", err)
	}
}
