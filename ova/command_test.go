package ova

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandDryRun(t *testing.T) {
	dir := t.TempDir()
	write := func(p map[string]string) string {
		f := filepath.Join(dir, "env.xml")
		if err := os.WriteFile(f, EnvironmentXML(p), 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	run := func(args ...string) (string, error) {
		cmd := Command()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(args)
		err := cmd.Execute()
		return out.String(), err
	}
	out, err := run("--dry-run", "--env-file", write(props("role", "coordinator", "node_id", "n1", "ip", "10.1.1.1", "netmask", "16",
		"join_address", "https://10.1.1.2:8443", "join_token", testToken)))
	if err != nil {
		t.Fatal(err)
	}
	want := "continuum coordinator --node-id n1 --data-dir /data/coordinator --api-addr 10.1.1.1:8443 --raft-addr 10.1.1.1:8300 --join https://10.1.1.2:8443 --join-token <redacted>\n"
	if out != want {
		t.Errorf("dry run printed %q, want %q", out, want)
	}

	out, err = run("--dry-run", "--env-file", write(props("role", "coordinator", "node_id", "n1", "bootstrap", "maybe")))
	if err == nil {
		t.Fatal("bad properties accepted")
	}
	for _, s := range []string{"configuration needs attention", `continuum.bootstrap = "maybe": must be true or false`, "continuum.join_address: required"} {
		if !strings.Contains(out, s) {
			t.Errorf("report lacks %q:\n%s", s, out)
		}
	}
	if _, err := run("--dry-run"); err == nil {
		t.Error("dry run without --env-file accepted")
	}
}

func TestProblemReportNoEnvironment(t *testing.T) {
	r := ProblemReport(errorsJoin(ErrNoEnvironment))
	if !strings.Contains(r, "No OVF environment was found") {
		t.Errorf("report:\n%s", r)
	}
}

func errorsJoin(err error) error { return &wrapped{err} }

type wrapped struct{ err error }

func (w *wrapped) Error() string { return "cd-rom: " + w.err.Error() }
func (w *wrapped) Unwrap() error { return w.err }
