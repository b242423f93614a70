package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// DrillResult is the outcome of "drill ha".
type DrillResult struct {
	Mode            string   `json:"mode"` // "transfer" or "kill"
	OldLeader       string   `json:"old_leader"`
	NewLeader       string   `json:"new_leader"`
	KilledPID       int      `json:"killed_pid,omitempty"`
	RecoverySeconds float64  `json:"recovery_seconds"`
	Written         int      `json:"written"`
	Verified        int      `json:"verified"`
	Lost            []string `json:"lost"`
	CleanedUp       bool     `json:"cleaned_up"`
	OK              bool     `json:"ok"`
}

// DrillOptions configure an HA drill.
type DrillOptions struct {
	Kill    bool
	Writes  int
	Timeout time.Duration // bound on waiting for a new leader
}

// isLocalHost says whether host names this machine.
func isLocalHost(host, hostname string) bool {
	if host == "localhost" {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsLoopback() {
			return true
		}
		addrs, _ := net.InterfaceAddrs()
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
		return false
	}
	return host == hostname
}

// endpointClients returns one non-retrying client per member API, so a
// write can be tried through every node in turn.
func endpointClients(st *client.ClusterStatus, token string, ca []byte) ([]*client.Client, error) {
	var out []*client.Client
	for _, m := range st.Members {
		if m.APIAddr == "" {
			continue
		}
		c, err := client.New("https://"+m.APIAddr, token, ca)
		if err != nil {
			return nil, err
		}
		c.RetryFor = 0
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no member has a known API address")
	}
	return out, nil
}

// RunDrill writes objects, makes the leader go away (transfer or SIGKILL),
// measures the time until a write succeeds again, and checks that nothing
// written before is lost. It removes its objects at the end.
func RunDrill(ctx context.Context, c *client.Client, token string, ca []byte, o DrillOptions) (*DrillResult, error) {
	if o.Writes < 1 {
		return nil, errors.New("--writes must be at least 1")
	}
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	res := &DrillResult{Mode: "transfer", Lost: []string{}}
	if o.Kill {
		res.Mode = "kill"
	}
	st, err := c.ClusterStatus(ctx)
	if err != nil {
		return nil, fmt.Errorf("read cluster status: %w", err)
	}
	if st.LeaderID == "" {
		return nil, errors.New("the cluster has no leader now; nothing to drill")
	}
	if len(st.Members) < 3 {
		return nil, fmt.Errorf("the cluster has %d members; an HA drill needs at least 3", len(st.Members))
	}
	var leader *client.Member
	for i := range st.Members {
		if st.Members[i].ID == st.LeaderID {
			leader = &st.Members[i]
		}
	}
	if leader == nil {
		return nil, fmt.Errorf("leader %s is not in the member list", st.LeaderID)
	}
	res.OldLeader = leader.ID
	if o.Kill {
		hostname, _ := os.Hostname()
		host, _, _ := net.SplitHostPort(leader.APIAddr)
		switch {
		case leader.PID <= 0:
			return nil, fmt.Errorf("leader %s did not report its process ID; cannot kill it", leader.ID)
		case leader.Hostname != hostname || !isLocalHost(host, hostname):
			return nil, fmt.Errorf("leader %s runs on %s (%s), not on this machine (%s): --kill only works on a local leader",
				leader.ID, leader.Hostname, leader.APIAddr, hostname)
		}
	}
	nodes, err := endpointClients(st, token, ca)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, n := range nodes {
			n.Close()
		}
	}()

	prefix := fmt.Sprintf("drill-%d", time.Now().UnixNano())
	rule := func(name string, i int) *model.TrafficRule {
		return &model.TrafficRule{Name: name, SourceCIDR: fmt.Sprintf("10.%d.%d.0/24", 200+i/65536%50, i/256%256),
			TargetCIDR: fmt.Sprintf("10.%d.%d.0/24", 250, i%256)}
	}
	var written []string
	for i := 0; i < o.Writes; i++ {
		name := fmt.Sprintf("%s-%d", prefix, i)
		if _, err := c.CreateTrafficRule(ctx, rule(name, i)); err != nil {
			cleanup(ctx, c, prefix)
			return nil, fmt.Errorf("write %s before the drill: %w", name, err)
		}
		written = append(written, name)
	}
	res.Written = len(written)

	var start time.Time
	if o.Kill {
		start = time.Now()
		if err := syscall.Kill(leader.PID, syscall.SIGKILL); err != nil {
			cleanup(ctx, c, prefix)
			return nil, fmt.Errorf("kill leader %s (pid %d): %w", leader.ID, leader.PID, err)
		}
		res.KilledPID = leader.PID
	} else {
		start = time.Now()
		if _, err := c.TransferLeadership(ctx, ""); err != nil {
			cleanup(ctx, c, prefix)
			return nil, fmt.Errorf("transfer leadership: %w", err)
		}
	}

	// Write through any node until one write succeeds.
	deadline := start.Add(o.Timeout)
	probe := prefix + "-probe"
	ok := false
	for k := 0; time.Now().Before(deadline); k++ {
		n := nodes[k%len(nodes)]
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.CreateTrafficRule(actx, rule(probe, o.Writes))
		cancel()
		if err == nil || errors.Is(err, model.ErrConflict) {
			// A conflict means an earlier attempt was committed after its
			// answer was lost: the cluster accepted a write.
			ok = true
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	res.RecoverySeconds = time.Since(start).Seconds()
	if !ok {
		return res, fmt.Errorf("no write succeeded within %s after the leader went away", o.Timeout)
	}

	// Verify through the new leader (linearizable reads).
	var rules []*model.TrafficRule
	for k := 0; ; k++ {
		n := nodes[k%len(nodes)]
		actx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st2, err := n.ClusterStatus(actx)
		if err == nil && st2.LeaderID != "" {
			res.NewLeader = st2.LeaderID
			rules, err = n.ListTrafficRules(actx)
		}
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			return res, fmt.Errorf("read back after the drill: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	have := map[string]bool{}
	for _, r := range rules {
		have[r.Name] = true
	}
	for _, name := range written {
		if have[name] {
			res.Verified++
		} else {
			res.Lost = append(res.Lost, name)
		}
	}
	res.CleanedUp = cleanup(ctx, multi(nodes, c), prefix) == nil
	res.OK = len(res.Lost) == 0
	return res, nil
}

// multi returns a client over every node's endpoint that retries, for
// cleanup after a failover.
func multi(nodes []*client.Client, fallback *client.Client) *client.Client {
	var eps []string
	for _, n := range nodes {
		eps = append(eps, n.Endpoints()...)
	}
	return fallback.WithEndpoints(eps)
}

// cleanup deletes every traffic rule whose name starts with prefix.
func cleanup(ctx context.Context, c *client.Client, prefix string) error {
	rules, err := c.ListTrafficRules(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, r := range rules {
		if strings.HasPrefix(r.Name, prefix) {
			if err := c.DeleteTrafficRule(ctx, r.ID); err != nil && !errors.Is(err, model.ErrNotFound) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func newDrillCommand() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{Use: "drill", Short: "Disaster-recovery drills"}
	addClientFlags(cmd.PersistentFlags(), o)
	var d DrillOptions
	ha := &cobra.Command{Use: "ha", Short: "Make the coordinator leader go away and measure recovery", Long: `Write objects, then
transfer leadership away from the leader (default) or kill the leader process
with SIGKILL (--kill, only when it runs on this machine), write until a write
succeeds again, report the seconds that took, and check that every object
written before is still there. Exits non-zero if anything was lost.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if d.Writes < 1 {
				return errors.New("--writes must be at least 1")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ca, err := os.ReadFile(o.cacert)
			if err != nil {
				return fmt.Errorf("read CA certificate: %w", err)
			}
			res, err := RunDrill(ctxOf(cmd), c, o.token, ca, d)
			if err != nil {
				return err
			}
			if err := o.print(cmd.OutOrStdout(), res, func(tw *tabwriter.Writer) {
				row(tw, "mode", res.Mode)
				row(tw, "old leader", res.OldLeader)
				row(tw, "new leader", res.NewLeader)
				row(tw, "recovery", fmt.Sprintf("%.2fs", res.RecoverySeconds))
				row(tw, "written / verified", fmt.Sprintf("%d / %d", res.Written, res.Verified))
				row(tw, "lost", strings.Join(res.Lost, ", "))
				row(tw, "cleaned up", res.CleanedUp)
			}); err != nil {
				return err
			}
			if !res.OK {
				return fmt.Errorf("%d object(s) lost in the drill", len(res.Lost))
			}
			return nil
		}}
	ha.Flags().BoolVar(&d.Kill, "kill", false, "kill the leader process (SIGKILL) instead of transferring leadership")
	ha.Flags().IntVar(&d.Writes, "writes", 20, "objects to write before the drill")
	ha.Flags().DurationVar(&d.Timeout, "timeout", 60*time.Second, "how long to wait for a write to succeed again")
	cmd.AddCommand(ha)
	return cmd
}
