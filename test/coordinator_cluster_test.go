package test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/continuum-cdp/continuum/internal/netutil"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// coordNode is one coordinator process started by a test.
type coordNode struct {
	t               *testing.T
	id, data        string
	api, raft       string
	args            []string
	log             string
	cmd             *exec.Cmd
	done            chan struct{}
	exitErr         error
	bootstrap, join bool
}

func coordFreeAddr(t *testing.T) string {
	t.Helper()
	addr, err := netutil.FreeLoopbackAddr()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

func newCoordNode(t *testing.T, root, id string, extra ...string) *coordNode {
	n := &coordNode{t: t, id: id, data: filepath.Join(root, id), api: coordFreeAddr(t), raft: coordFreeAddr(t),
		log: filepath.Join(root, id+".log")}
	n.args = append([]string{"coordinator", "--node-id", id, "--data-dir", n.data, "--api-addr", n.api, "--raft-addr", n.raft}, extra...)
	return n
}

func (n *coordNode) start() {
	n.t.Helper()
	f, err := os.OpenFile(n.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := exec.Command(continuumBinary(n.t), n.args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("start %s: %v", n.id, err)
	}
	n.cmd, n.done = cmd, make(chan struct{})
	go func(done chan struct{}) {
		n.exitErr = cmd.Wait()
		f.Close()
		close(done)
	}(n.done)
	n.t.Cleanup(n.kill)
}

func (n *coordNode) kill() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	select {
	case <-n.done:
		return
	default:
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
	<-n.done
}

// stop ends the node with SIGTERM (graceful: leadership is handed over).
func (n *coordNode) stop() {
	n.t.Helper()
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(20 * time.Second):
		n.t.Fatalf("%s did not stop on SIGTERM", n.id)
	}
}

func (n *coordNode) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

func (n *coordNode) logTail() string {
	b, _ := os.ReadFile(n.log)
	if len(b) > 3000 {
		b = b[len(b)-3000:]
	}
	return string(b)
}

func (n *coordNode) url() string { return "https://" + n.api }

// waitUp waits until the node answers /healthz and, for the bootstrap node,
// wrote its admin token.
func (n *coordNode) waitUp() {
	n.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if n.exited() {
			n.t.Fatalf("%s exited: %v\n%s", n.id, n.exitErr, n.logTail())
		}
		ca, err := os.ReadFile(filepath.Join(n.data, "ca.pem"))
		_, tokErr := os.Stat(filepath.Join(n.data, "admin.token"))
		if err == nil && (!n.bootstrap || tokErr == nil) {
			c, err := client.New(n.url(), "", ca)
			if err == nil {
				c.RetryFor = 0
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				_, err = c.Health(ctx)
				cancel()
				c.Close()
				if err == nil {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	n.t.Fatalf("%s not up after 60s\n%s", n.id, n.logTail())
}

// coordCluster is a 3-node cluster of real processes.
type coordCluster struct {
	t      *testing.T
	root   string
	nodes  []*coordNode
	token  string
	caPath string
	ca     []byte
}

func startCoordCluster(t *testing.T) *coordCluster {
	t.Helper()
	return startCoordClusterArgs(t)
}

// startCoordClusterArgs is startCoordCluster with extra coordinator flags
// on every node.
func startCoordClusterArgs(t *testing.T, extra ...string) *coordCluster {
	t.Helper()
	root := t.TempDir()
	c := &coordCluster{t: t, root: root}
	first := newCoordNode(t, root, "c1", append([]string{"--bootstrap"}, extra...)...)
	first.bootstrap = true
	first.start()
	first.waitUp()
	c.nodes = append(c.nodes, first)
	tok, err := os.ReadFile(filepath.Join(first.data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	c.token = strings.TrimSpace(string(tok))
	c.caPath = filepath.Join(first.data, "ca.pem")
	if c.ca, err = os.ReadFile(c.caPath); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"ca-key.pem", "node-key.pem", "admin.token", "join.token"} {
		st, err := os.Stat(filepath.Join(first.data, f))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v mode %v, want 0600", f, err, st.Mode().Perm())
		}
	}
	join := c.joinToken()
	for _, id := range []string{"c2", "c3"} {
		n := newCoordNode(t, root, id, append([]string{"--join", first.url(), "--join-token", join}, extra...)...)
		n.join = true
		n.start()
		n.waitUp()
		c.nodes = append(c.nodes, n)
	}
	return c
}

func (c *coordCluster) joinToken() string {
	b, err := os.ReadFile(filepath.Join(c.nodes[0].data, "join.token"))
	if err != nil {
		c.t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// cli runs a client command against api and returns stdout; stderr is in
// the error.
func (c *coordCluster) cli(api string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, continuumBinary(c.t), args...)
	cmd.Env = append(os.Environ(), "CONTINUUM_API="+api, "CONTINUUM_TOKEN="+c.token, "CONTINUUM_CACERT="+c.caPath)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("continuum %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (c *coordCluster) client(n *coordNode, stale bool) *client.Client {
	cl, err := client.New(n.url(), c.token, c.ca)
	if err != nil {
		c.t.Fatal(err)
	}
	cl.Stale = stale
	cl.RetryFor = 10 * time.Second
	return cl
}

func (c *coordCluster) status(api string) client.ClusterStatus {
	c.t.Helper()
	out, err := c.cli(api, "cluster", "status", "-o", "json")
	if err != nil {
		c.t.Fatal(err)
	}
	var st client.ClusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatalf("cluster status output: %v\n%s", err, out)
	}
	return st
}

// eventually polls cond until it holds or 30s pass.
func eventually(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if err = cond(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s: %v", what, err)
}

// dirDigest lists every file under dir with its mode and content hash.
func dirDigest(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		sum := ""
		if !d.IsDir() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(data)
			sum = hex.EncodeToString(h[:])
		}
		fmt.Fprintf(&b, "%s %v %s %d\n", rel, info.Mode(), sum, info.ModTime().UnixNano())
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestCoordinatorCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real coordinator processes")
	}
	c := startCoordCluster(t)
	c1, c2, c3 := c.nodes[0], c.nodes[1], c.nodes[2]

	// Three voters and a leader, seen through the CLI.
	var st client.ClusterStatus
	eventually(t, "3 voters", func() error {
		st = c.status(c1.url())
		voters := 0
		for _, m := range st.Members {
			if m.Suffrage == "Voter" && m.Reachable && m.PID > 0 {
				voters++
			}
		}
		if voters != 3 || st.LeaderID == "" {
			return fmt.Errorf("%d reachable voters, leader %q", voters, st.LeaderID)
		}
		return nil
	})

	// Writes through a follower are forwarded to the leader.
	var follower *coordNode
	for _, n := range c.nodes {
		if n.id != st.LeaderID {
			follower = n
			break
		}
	}
	if _, err := c.cli(follower.url(), "vcenter", "add", "--name", "vc1", "--url", "https://vc1.example/sdk",
		"--username", "u", "--password", "secret"); err != nil {
		t.Fatal(err)
	}
	out, err := c.cli(follower.url(), "policy", "create", "gold", "--vcenter", "vc1", "--vm", "vm-42", "--vm", "web-1",
		"--target-cluster", "c-target", "--target-datastore", "ds1", "--rpo", "15s", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var created model.Policy
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.Generation != 1 || len(created.VMs) != 2 {
		t.Fatalf("policy create output: %v\n%s", err, out)
	}
	// Bad input is refused before any call and names the flag.
	if _, err := c.cli(follower.url(), "policy", "create", "bad", "--vcenter", "vc1", "--vm", "vm-1",
		"--target-cluster", "c", "--target-datastore", "d", "--rpo", "1m", "--short-term-retention", "30s"); err == nil ||
		!strings.Contains(err.Error(), "--short-term-retention") {
		t.Fatalf("retention below RPO: %v", err)
	}
	// Readable on every node from its local state.
	for _, n := range c.nodes {
		cl := c.client(n, true)
		eventually(t, "policy on "+n.id, func() error {
			p, err := cl.GetPolicy(context.Background(), "gold")
			if err != nil {
				return err
			}
			if p.ID != created.ID {
				return fmt.Errorf("got %s", p.ID)
			}
			return nil
		})
		cl.Close()
	}

	// Edit through another follower changes only the given setting.
	if _, err := c.cli(c.nodes[2].url(), "policy", "edit", "gold", "--rpo", "30s"); err != nil {
		t.Fatal(err)
	}
	out, err = c.cli(c1.url(), "policy", "show", "gold", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var edited model.Policy
	if err := json.Unmarshal([]byte(out), &edited); err != nil || edited.RPO.D() != 30*time.Second || edited.Generation != 2 || edited.Target.Datastore != "ds1" {
		t.Fatalf("after edit: %v\n%s", err, out)
	}

	// HA drill: kill the leader, a write succeeds again, nothing is lost.
	out, err = c.cli(strings.Join([]string{c1.url(), c2.url(), c3.url()}, ","), "drill", "ha", "--kill", "--writes", "10", "-o", "json")
	if err != nil {
		t.Fatalf("drill: %v\n%s", err, out)
	}
	var res struct {
		OldLeader       string   `json:"old_leader"`
		NewLeader       string   `json:"new_leader"`
		KilledPID       int      `json:"killed_pid"`
		RecoverySeconds float64  `json:"recovery_seconds"`
		Written         int      `json:"written"`
		Verified        int      `json:"verified"`
		Lost            []string `json:"lost"`
		OK              bool     `json:"ok"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("drill output: %v\n%s", err, out)
	}
	if !res.OK || len(res.Lost) != 0 || res.Verified != 10 || res.NewLeader == res.OldLeader || res.NewLeader == "" || res.RecoverySeconds <= 0 {
		t.Fatalf("drill result %+v", res)
	}
	var killed *coordNode
	for _, n := range c.nodes {
		if n.id == res.OldLeader {
			killed = n
		}
	}
	select {
	case <-killed.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("old leader %s (pid %d) still running", killed.id, res.KilledPID)
	}

	// A write while it is down, then it restarts from its data directory
	// (same command line, no re-bootstrap or re-join) and catches up.
	var live *coordNode
	for _, n := range c.nodes {
		if n != killed {
			live = n
			break
		}
	}
	tokBefore, _ := os.ReadFile(filepath.Join(c1.data, "admin.token"))
	if _, err := c.cli(live.url(), "policy", "disable", "gold"); err != nil {
		t.Fatal(err)
	}
	killed.start()
	killed.waitUp()
	kc := c.client(killed, true)
	eventually(t, "restarted node catches up", func() error {
		p, err := kc.GetPolicy(context.Background(), "gold")
		if err != nil {
			return err
		}
		if p.Enabled {
			return errors.New("still sees the policy enabled")
		}
		return nil
	})
	kc.Close()
	if tokAfter, _ := os.ReadFile(filepath.Join(c1.data, "admin.token")); !bytes.Equal(tokBefore, tokAfter) {
		t.Fatal("restart rewrote admin.token")
	}
	eventually(t, "3 voters after restart", func() error {
		st := c.status(live.url())
		for _, m := range st.Members {
			if !m.Reachable {
				return fmt.Errorf("%s unreachable", m.ID)
			}
		}
		if len(st.Members) != 3 {
			return fmt.Errorf("%d members", len(st.Members))
		}
		return nil
	})

	// A wrong join token is refused and nothing is written.
	join := c.joinToken()
	fp, secret, _ := strings.Cut(join, ".")
	for name, tok := range map[string]string{
		"wrong secret":      fp + "." + strings.Repeat("0", len(secret)),
		"wrong fingerprint": strings.Repeat("ab", 32) + "." + secret,
		"malformed":         "not-a-token",
	} {
		n := newCoordNode(t, c.root, "bad-"+strings.ReplaceAll(name, " ", "-"), "--join", c1.url(), "--join-token", tok)
		n.start()
		select {
		case <-n.done:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: joiner with a bad token still running", name)
		}
		if n.exitErr == nil {
			t.Fatalf("%s: joiner exited 0", name)
		}
		if _, err := os.Stat(filepath.Join(n.data, "ca.pem")); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: files written despite the refusal: %v", name, err)
		}
		lg := n.logTail()
		if !strings.Contains(lg, "join") {
			t.Fatalf("%s: unclear message:\n%s", name, lg)
		}
	}

	// A coordinator pointed at another node's data directory refuses to
	// start and leaves the files as they were.
	victim := c.nodes[2]
	if victim == killed {
		victim = c.nodes[1]
	}
	victim.stop()
	before := dirDigest(t, victim.data)
	intruder := &coordNode{t: t, id: "intruder", data: victim.data, api: coordFreeAddr(t), raft: coordFreeAddr(t),
		log: filepath.Join(c.root, "intruder.log")}
	intruder.args = []string{"coordinator", "--node-id", "intruder", "--data-dir", victim.data, "--api-addr", intruder.api, "--raft-addr", intruder.raft}
	intruder.start()
	select {
	case <-intruder.done:
	case <-time.After(30 * time.Second):
		t.Fatal("coordinator on a foreign data directory still running")
	}
	if intruder.exitErr == nil || !strings.Contains(intruder.logTail(), "belongs to node") {
		t.Fatalf("foreign data dir: exit %v\n%s", intruder.exitErr, intruder.logTail())
	}
	if after := dirDigest(t, victim.data); after != before {
		t.Fatalf("foreign start changed the data directory:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	victim.start()
	victim.waitUp()

	// Leadership transfer through the CLI, and the cluster still writes.
	st = c.status(c1.url())
	out, err = c.cli(c1.url(), "cluster", "transfer", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var tr client.TransferResponse
	if err := json.Unmarshal([]byte(out), &tr); err != nil || tr.LeaderID == "" || tr.LeaderID == st.LeaderID {
		t.Fatalf("transfer from %s: %v %s", st.LeaderID, err, out)
	}
	if _, err := c.cli(c1.url(), "policy", "delete", "gold"); err != nil {
		t.Fatal(err)
	}

	// A token made with the CLI lets a fourth node join; removing it
	// brings the cluster back to three voters.
	tok, err := c.cli(c2.url(), "cluster", "token", "create", "--role", "join")
	if err != nil {
		t.Fatal(err)
	}
	c4 := newCoordNode(t, c.root, "c4", "--join", c2.url(), "--join-token", strings.TrimSpace(tok))
	c4.start()
	c4.waitUp()
	eventually(t, "4 members", func() error {
		if n := len(c.status(c1.url()).Members); n != 4 {
			return fmt.Errorf("%d members", n)
		}
		return nil
	})
	if _, err := c.cli(c1.url(), "cluster", "remove", "c4"); err != nil {
		t.Fatal(err)
	}
	c4.kill()
	st = c.status(c3.url())
	if len(st.Members) != 3 {
		t.Fatalf("after remove: %+v", st.Members)
	}
	for _, m := range st.Members {
		if m.ID == "c4" {
			t.Fatal("c4 still a member")
		}
	}
}
