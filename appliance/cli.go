package appliance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// Environment variables that stand in for the client flags.
const (
	EnvAPI    = "CONTINUUM_API"
	EnvToken  = "CONTINUUM_TOKEN"
	EnvCACert = "CONTINUUM_CACERT"
)

// clientOpts are the connection and output flags of every client command.
type clientOpts struct {
	api, token, cacert, output string
}

func addClientFlags(fs *pflag.FlagSet, o *clientOpts) {
	fs.StringVar(&o.api, "api", "", "coordinator API URL(s), comma-separated (env "+EnvAPI+")")
	fs.StringVar(&o.token, "token", "", "admin API token, or @FILE to read it from a file (env "+EnvToken+")")
	fs.StringVar(&o.cacert, "cacert", "", "cluster CA certificate file, e.g. DATA/ca.pem (env "+EnvCACert+")")
	fs.StringVarP(&o.output, "output", "o", "table", "output format: table or json")
}

func (o *clientOpts) resolve() error {
	if o.api == "" {
		o.api = os.Getenv(EnvAPI)
	}
	if o.token == "" {
		o.token = os.Getenv(EnvToken)
	}
	if o.cacert == "" {
		o.cacert = os.Getenv(EnvCACert)
	}
	switch {
	case o.output != "table" && o.output != "json":
		return fmt.Errorf("-o: want table or json, got %q", o.output)
	case o.api == "":
		return errors.New("no coordinator given: use --api https://HOST:PORT or set " + EnvAPI)
	case o.token == "":
		return errors.New("no token given: use --token or set " + EnvToken)
	case o.cacert == "":
		return errors.New("no CA certificate given: use --cacert DATA/ca.pem or set " + EnvCACert)
	}
	return nil
}

// client checks the flags and builds a client; nothing is sent before this
// succeeds.
func (o *clientOpts) client() (*client.Client, error) {
	if err := o.resolve(); err != nil {
		return nil, err
	}
	if path, ok := strings.CutPrefix(o.token, "@"); ok {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read token file: %w", err)
		}
		o.token = strings.TrimSpace(string(b))
	}
	ca, err := os.ReadFile(o.cacert)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	return client.New(o.api, o.token, ca)
}

// print writes v as JSON, or calls table with a tabwriter.
func (o *clientOpts) print(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	if o.output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

func row(tw io.Writer, cols ...any) {
	s := make([]string, len(cols))
	for i, c := range cols {
		s[i] = fmt.Sprint(c)
		if s[i] == "" {
			s[i] = "-"
		}
	}
	fmt.Fprintln(tw, strings.Join(s, "\t"))
}

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}

// durFlag binds a model.Duration to a flag, parsed as a Go duration.
type durFlag struct{ d *model.Duration }

func (v durFlag) String() string {
	if v.d == nil || *v.d == 0 {
		return ""
	}
	return v.d.String()
}
func (v durFlag) Type() string { return "duration" }
func (v durFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("not a duration (want e.g. 15s, 4h): %q", s)
	}
	*v.d = model.Duration(d)
	return nil
}

// ---- cluster ----

func newClusterCommand() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{Use: "cluster", Short: "Inspect and manage the coordinator cluster"}
	addClientFlags(cmd.PersistentFlags(), o)

	status := &cobra.Command{Use: "status", Short: "Members, leader, term and applied index", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			s, err := c.ClusterStatus(ctxOf(cmd))
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), s, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "cluster %s  leader %s  term %s  applied %d\n\n", s.ClusterID, s.LeaderID, s.Term, s.AppliedIndex)
				row(tw, "ID", "LEADER", "STATE", "SUFFRAGE", "API", "RAFT", "APPLIED", "PID", "HOST")
				for _, m := range s.Members {
					state := m.RaftState
					if !m.Reachable {
						state = "unreachable"
					}
					row(tw, m.ID, yes(m.Leader), state, m.Suffrage, m.APIAddr, m.RaftAddr, m.Applied, m.PID, m.Hostname)
				}
			})
		}}

	var role string
	token := &cobra.Command{Use: "token", Short: "Manage join and component tokens"}
	create := &cobra.Command{Use: "create", Short: "Create a token (shown once)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r := model.TokenRole(role)
			if r != model.TokenJoin && r != model.TokenComponent {
				return fmt.Errorf("--role: want join or component, got %q", role)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			t, err := c.CreateToken(ctxOf(cmd), r)
			if err != nil {
				return err
			}
			if o.output == "json" {
				return o.print(cmd.OutOrStdout(), t, nil)
			}
			fmt.Fprintln(cmd.OutOrStdout(), t.Token)
			return nil
		}}
	create.Flags().StringVar(&role, "role", "join", "join (coordinators) or component (proxies, filters)")
	token.AddCommand(create)

	remove := &cobra.Command{Use: "remove ID", Short: "Remove a node from the cluster", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.RemoveMember(ctxOf(cmd), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		}}

	var to string
	transfer := &cobra.Command{Use: "transfer", Short: "Hand leadership to another node", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			r, err := c.TransferLeadership(ctxOf(cmd), to)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), r, func(tw *tabwriter.Writer) { fmt.Fprintf(tw, "leader is now %s\n", r.LeaderID) })
		}}
	transfer.Flags().StringVar(&to, "to", "", "node ID to hand leadership to (default: any other voter)")
	cmd.AddCommand(status, token, remove, transfer)
	return cmd
}

func yes(b bool) string {
	if b {
		return "*"
	}
	return ""
}

// ---- vcenter ----

func newVCenterCommand() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{Use: "vcenter", Short: "Register and list vCenter Servers"}
	addClientFlags(cmd.PersistentFlags(), o)
	var req client.VCenterRequest
	var passwordEnv string
	add := &cobra.Command{Use: "add", Short: "Register a vCenter", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if passwordEnv != "" && req.Password == "" {
				req.Password = os.Getenv(passwordEnv)
			}
			v := model.VCenter{Name: req.Name, URL: req.URL, Username: req.Username}
			if err := v.Validate(); err != nil {
				return flagError(err)
			}
			if req.Password == "" {
				return errors.New("--password (or --password-env VAR) is required")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			got, err := c.AddVCenter(ctxOf(cmd), req)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), got, func(tw *tabwriter.Writer) { vcTable(tw, []*model.VCenter{got}) })
		}}
	f := add.Flags()
	f.StringVar(&req.Name, "name", "", "unique name")
	f.StringVar(&req.URL, "url", "", "SDK URL, e.g. https://vc.example/sdk")
	f.StringVar(&req.Username, "username", "", "user name")
	f.StringVar(&req.Password, "password", "", "password (sealed by the coordinator)")
	f.StringVar(&passwordEnv, "password-env", "", "read the password from this environment variable")
	f.StringVar(&req.Thumbprint, "thumbprint", "", "expected certificate thumbprint")
	f.BoolVar(&req.Insecure, "insecure", false, "do not verify the vCenter certificate")

	list := &cobra.Command{Use: "list", Short: "List vCenters", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			l, err := c.ListVCenters(ctxOf(cmd))
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), l, func(tw *tabwriter.Writer) { vcTable(tw, l) })
		}}
	remove := &cobra.Command{Use: "remove NAME|ID", Short: "Remove a vCenter", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if err := c.DeleteVCenter(ctxOf(cmd), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		}}
	cmd.AddCommand(add, list, remove)
	return cmd
}

func vcTable(tw io.Writer, l []*model.VCenter) {
	row(tw, "ID", "NAME", "URL", "USER", "INSECURE")
	for _, v := range l {
		row(tw, v.ID, v.Name, v.URL, v.Username, v.Insecure)
	}
}

// flagNames maps API field names to the CLI flags that set them.
var flagNames = map[string]string{
	"vcenter_id": "--vcenter", "vms": "--vm", "target.vcenter_id": "--target-vcenter", "target.cluster": "--target-cluster",
	"target.datastore": "--target-datastore", "target.host": "--target-host", "rpo": "--rpo",
	"short_term_retention": "--short-term-retention", "long_term_every": "--long-term-every",
	"long_term_retention": "--long-term-retention", "rpo_warning": "--rpo-warning", "rpo_error": "--rpo-error",
	"proxy_selection": "--proxy-selection", "source_proxies": "--source-proxy", "target_proxies": "--target-proxy",
	"name": "--name", "role": "--role", "kind": "--kind", "address": "--address", "cluster_id": "--cluster",
	"max_tasks": "--max-tasks", "url": "--url", "username": "--username",
}

// flagError rewrites a validation error to name the flag.
func flagError(err error) error {
	f := model.ErrorField(err)
	base := f
	if i := strings.IndexByte(base, '['); i >= 0 {
		base = base[:i]
	}
	if fl, ok := flagNames[base]; ok {
		var fe *model.FieldError
		if errors.As(err, &fe) {
			return fmt.Errorf("%s: %s", fl, fe.Reason)
		}
		return fmt.Errorf("%s: %w", fl, err)
	}
	return err
}

// ---- proxy (client subcommands) ----

// AddProxyClientCommands attaches "add", "list" and "remove" to parent,
// which is the proxy role command when it exists.
func AddProxyClientCommands(parent *cobra.Command) {
	for _, c := range proxyClientCommands() {
		parent.AddCommand(c)
	}
}

func proxyClientCommands() []*cobra.Command {
	o := &clientOpts{}
	var p model.Proxy
	var role, kind string
	add := &cobra.Command{Use: "add", Short: "Register a proxy with the coordinator", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p.Role, p.Kind = model.ProxyRole(role), model.ProxyKind(kind)
			if err := p.Validate(); err != nil {
				return flagError(err)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			got, err := c.CreateProxy(ctxOf(cmd), &p)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), got, func(tw *tabwriter.Writer) { proxyTable(tw, []*model.Proxy{got}) })
		}}
	f := add.Flags()
	f.StringVar(&p.Name, "name", "", "unique name")
	f.StringVar(&role, "role", "both", "source, target or both")
	f.StringVar(&kind, "kind", "physical", "physical or vm")
	f.StringVar(&p.Address, "address", "", "HOST:PORT of its data-path listener")
	f.StringVar(&p.ClusterID, "cluster", "", "cluster a VM proxy runs in")
	f.StringVar(&p.VCenterID, "vcenter", "", "vCenter (name or ID) a VM proxy runs in")
	f.IntVar(&p.MaxTasks, "max-tasks", 8, "concurrent VM streams it can carry")
	addClientFlags(f, o)

	lo := &clientOpts{}
	list := &cobra.Command{Use: "list", Short: "List proxies registered with the coordinator", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := lo.client()
			if err != nil {
				return err
			}
			l, err := c.ListProxies(ctxOf(cmd))
			if err != nil {
				return err
			}
			return lo.print(cmd.OutOrStdout(), l, func(tw *tabwriter.Writer) { proxyTable(tw, l) })
		}}
	addClientFlags(list.Flags(), lo)

	ro := &clientOpts{}
	remove := &cobra.Command{Use: "remove NAME|ID", Short: "Remove a proxy from the coordinator", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := ro.client()
			if err != nil {
				return err
			}
			if err := c.DeleteProxy(ctxOf(cmd), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", args[0])
			return nil
		}}
	addClientFlags(remove.Flags(), ro)
	return []*cobra.Command{add, list, remove}
}

func proxyTable(tw io.Writer, l []*model.Proxy) {
	row(tw, "ID", "NAME", "ROLE", "KIND", "ADDRESS", "CLUSTER", "MAX", "LAST SEEN")
	for _, p := range l {
		seen := ""
		if !p.LastHeartbeat.IsZero() {
			seen = p.LastHeartbeat.Format(time.RFC3339)
		}
		row(tw, p.ID, p.Name, p.Role, p.Kind, p.Address, p.ClusterID, p.MaxTasks, seen)
	}
}

// AddFilterClientCommands attaches the filter client subcommands
// ("install") to parent, the filter role command when it exists.
func AddFilterClientCommands(parent *cobra.Command) {
	o := &clientOpts{}
	var req client.FilterInstallRequest
	install := &cobra.Command{Use: "install --cluster C", Short: "Install the I/O filter on a cluster (and the CDP storage policy)", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.Cluster == "" {
				return errors.New("--cluster is required")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			cl, err := c.InstallFilter(ctxOf(cmd), req)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), cl, func(tw *tabwriter.Writer) {
				row(tw, "ID", "NAME", "FILTER", "STORAGE POLICY")
				row(tw, cl.ID, cl.Name, cl.FilterState, cl.StorageProfileID)
			})
		}}
	install.Flags().StringVar(&req.Cluster, "cluster", "", "cluster name or MoRef")
	install.Flags().StringVar(&req.VCenterID, "vcenter", "", "vCenter name or ID (optional with one vCenter)")
	addClientFlags(install.Flags(), o)
	parent.AddCommand(install)
}

// ---- policy ----

// policyFlags are the flags of policy create and edit.
type policyFlags struct {
	name, description, vcenter, targetVC, targetCluster, targetDS, targetHost string
	targetPool, targetFolder, selection, hook                                 string
	vms, srcProxies, dstProxies                                               []string
	rpo, short, ltEvery, ltRet, warn, errD                                    model.Duration
	disabled                                                                  bool
}

func (pf *policyFlags) bind(fs *pflag.FlagSet) {
	fs.StringVar(&pf.name, "name", "", "unique policy name")
	fs.StringVar(&pf.description, "description", "", "free text")
	fs.StringVar(&pf.vcenter, "vcenter", "", "source vCenter (name or ID)")
	fs.StringArrayVar(&pf.vms, "vm", nil, "VM to protect, by moref (vm-42) or name; repeatable")
	fs.StringVar(&pf.targetVC, "target-vcenter", "", "target vCenter (default: the source vCenter)")
	fs.StringVar(&pf.targetCluster, "target-cluster", "", "target cluster (name or moref)")
	fs.StringVar(&pf.targetDS, "target-datastore", "", "target datastore")
	fs.StringVar(&pf.targetHost, "target-host", "", "target host (optional)")
	fs.StringVar(&pf.targetPool, "target-resource-pool", "", "target resource pool (optional)")
	fs.StringVar(&pf.targetFolder, "target-folder", "", "target VM folder (optional)")
	fs.Var(durFlag{&pf.rpo}, "rpo", "recovery point objective, e.g. 15s")
	fs.Var(durFlag{&pf.short}, "short-term-retention", "keep short-term points this long (default 1h)")
	fs.Var(durFlag{&pf.ltEvery}, "long-term-every", "create a long-term point this often (0: none)")
	fs.Var(durFlag{&pf.ltRet}, "long-term-retention", "keep long-term points this long")
	fs.Var(durFlag{&pf.warn}, "rpo-warning", "lag above this is a warning")
	fs.Var(durFlag{&pf.errD}, "rpo-error", "lag above this is an error")
	fs.StringVar(&pf.hook, "pre-point-hook", "", "command run (sh -c) before each long-term point, e.g. to quiesce an application")
	fs.StringVar(&pf.selection, "proxy-selection", "", "auto or manual (default auto; manual when proxies are given)")
	fs.StringArrayVar(&pf.srcProxies, "source-proxy", nil, "source proxy for manual selection; repeatable")
	fs.StringArrayVar(&pf.dstProxies, "target-proxy", nil, "target proxy for manual selection; repeatable")
}

var morefRE = regexp.MustCompile(`^vm-[0-9]+$`)

func vmRef(s string) model.VMRef {
	if morefRE.MatchString(s) {
		return model.VMRef{MoRef: s}
	}
	return model.VMRef{Name: s}
}

// apply copies the flags that were given onto p (all of them on create).
func (pf *policyFlags) apply(fs *pflag.FlagSet, p *model.Policy) {
	set := func(name string) bool { return fs.Changed(name) }
	if set("name") {
		p.Name = pf.name
	}
	if set("description") {
		p.Description = pf.description
	}
	if set("vcenter") {
		p.VCenterID = pf.vcenter
		if p.Target.VCenterID == "" {
			p.Target.VCenterID = pf.vcenter
		}
	}
	if set("vm") {
		p.VMs = nil
		for _, v := range pf.vms {
			p.VMs = append(p.VMs, vmRef(v))
		}
	}
	if set("target-vcenter") {
		p.Target.VCenterID = pf.targetVC
	}
	if set("target-cluster") {
		p.Target.Cluster = pf.targetCluster
	}
	if set("target-datastore") {
		p.Target.Datastore = pf.targetDS
	}
	if set("target-host") {
		p.Target.Host = pf.targetHost
	}
	if set("target-resource-pool") {
		p.Target.ResourcePool = pf.targetPool
	}
	if set("target-folder") {
		p.Target.Folder = pf.targetFolder
	}
	for _, d := range []struct {
		flag     string
		dst, src *model.Duration
	}{
		{"rpo", &p.RPO, &pf.rpo}, {"short-term-retention", &p.ShortTermRetention, &pf.short},
		{"long-term-every", &p.LongTermEvery, &pf.ltEvery}, {"long-term-retention", &p.LongTermRetention, &pf.ltRet},
		{"rpo-warning", &p.RPOWarning, &pf.warn}, {"rpo-error", &p.RPOError, &pf.errD},
	} {
		if set(d.flag) {
			*d.dst = *d.src
		}
	}
	if set("pre-point-hook") {
		p.PrePointHook = pf.hook
	}
	if set("source-proxy") {
		p.SourceProxies = pf.srcProxies
	}
	if set("target-proxy") {
		p.TargetProxies = pf.dstProxies
	}
	if set("proxy-selection") {
		p.ProxySelection = model.ProxySelection(pf.selection)
	} else if set("source-proxy") || set("target-proxy") {
		p.ProxySelection = model.SelectManual
	}
}

func readPolicyFile(path string) (*model.Policy, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read policy file: %w", err)
	}
	var p model.Policy
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy file %s: %w", path, err)
	}
	return &p, nil
}

func policyTable(tw io.Writer, l []*model.Policy) {
	row(tw, "ID", "NAME", "ENABLED", "VMS", "RPO", "SHORT-TERM", "LONG-TERM", "TARGET", "GEN")
	for _, p := range l {
		lt := ""
		if p.LongTermEvery > 0 {
			lt = p.LongTermEvery.String() + "/" + p.LongTermRetention.String()
		}
		row(tw, p.ID, p.Name, p.Enabled, len(p.VMs), p.RPO, p.ShortTermRetention, lt,
			p.Target.VCenterID+"/"+p.Target.Cluster+"/"+p.Target.Datastore, p.Generation)
	}
}

func policyDetail(tw io.Writer, p *model.Policy) {
	vms := make([]string, len(p.VMs))
	for i, v := range p.VMs {
		vms[i] = v.Key()
	}
	for _, kv := range [][2]string{
		{"ID", p.ID}, {"Name", p.Name}, {"Enabled", strconv.FormatBool(p.Enabled)}, {"Source vCenter", p.VCenterID},
		{"VMs", strings.Join(vms, ", ")}, {"Target vCenter", p.Target.VCenterID}, {"Target cluster", p.Target.Cluster},
		{"Target datastore", p.Target.Datastore}, {"Target host", p.Target.Host}, {"RPO", p.RPO.String()},
		{"Short-term retention", p.ShortTermRetention.String()}, {"Long-term every", p.LongTermEvery.String()},
		{"Long-term retention", p.LongTermRetention.String()}, {"RPO warning", p.RPOWarning.String()},
		{"RPO error", p.RPOError.String()}, {"Proxy selection", string(p.ProxySelection)},
		{"Source proxies", strings.Join(p.SourceProxies, ", ")}, {"Target proxies", strings.Join(p.TargetProxies, ", ")},
		{"Generation", strconv.FormatInt(p.Generation, 10)}, {"Updated", p.UpdatedAt.Format(time.RFC3339)},
	} {
		row(tw, kv[0]+":", kv[1])
	}
}

func newPolicyCommand() *cobra.Command {
	o := &clientOpts{}
	cmd := &cobra.Command{Use: "policy", Short: "Create and manage CDP policies"}
	addClientFlags(cmd.PersistentFlags(), o)

	var cf policyFlags
	var file string
	create := &cobra.Command{Use: "create [NAME]", Short: "Create a policy from flags or -f FILE.json", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := &model.Policy{Enabled: true}
			if file != "" {
				fp, err := readPolicyFile(file)
				if err != nil {
					return err
				}
				p = fp
			}
			cf.apply(cmd.Flags(), p)
			if len(args) == 1 {
				p.Name = args[0]
			}
			if cmd.Flags().Changed("disabled") {
				p.Enabled = !cf.disabled
			}
			check := *p
			check.Defaults()
			if err := check.Validate(); err != nil {
				return flagError(err)
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			got, err := c.CreatePolicy(ctxOf(cmd), p)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), got, func(tw *tabwriter.Writer) { policyDetail(tw, got) })
		}}
	cf.bind(create.Flags())
	create.Flags().StringVarP(&file, "file", "f", "", "policy as JSON (flags given as well override it; - for stdin)")
	create.Flags().BoolVar(&cf.disabled, "disabled", false, "create the policy disabled")

	var ef policyFlags
	edit := &cobra.Command{Use: "edit NAME|ID", Short: "Change the given settings of a policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			changed := false
			cmd.Flags().Visit(func(f *pflag.Flag) {
				if f.Name != "api" && f.Name != "token" && f.Name != "cacert" && f.Name != "output" {
					changed = true
				}
			})
			if !changed {
				return errors.New("nothing to change: give at least one setting flag")
			}
			c, err := o.client()
			if err != nil {
				return err
			}
			ctx := ctxOf(cmd)
			p, err := c.GetPolicy(ctx, args[0])
			if err != nil {
				return err
			}
			ef.apply(cmd.Flags(), p)
			check := *p
			check.Defaults()
			if err := check.Validate(); err != nil {
				return flagError(err)
			}
			got, err := c.UpdatePolicy(ctx, p.ID, p)
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), got, func(tw *tabwriter.Writer) { policyDetail(tw, got) })
		}}
	ef.bind(edit.Flags())

	list := &cobra.Command{Use: "list", Short: "List policies", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			l, err := c.ListPolicies(ctxOf(cmd))
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), l, func(tw *tabwriter.Writer) { policyTable(tw, l) })
		}}
	show := &cobra.Command{Use: "show NAME|ID", Short: "Show a policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			p, err := c.GetPolicy(ctxOf(cmd), args[0])
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), p, func(tw *tabwriter.Writer) { policyDetail(tw, p) })
		}}
	toggle := func(use, short string, enable bool) *cobra.Command {
		return &cobra.Command{Use: use + " NAME|ID", Short: short, Args: cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := o.client()
				if err != nil {
					return err
				}
				var p *model.Policy
				if enable {
					p, err = c.EnablePolicy(ctxOf(cmd), args[0])
				} else {
					p, err = c.DisablePolicy(ctxOf(cmd), args[0])
				}
				if err != nil {
					return err
				}
				return o.print(cmd.OutOrStdout(), p, func(tw *tabwriter.Writer) { policyTable(tw, []*model.Policy{p}) })
			}}
	}
	var delReplicas bool
	del := &cobra.Command{Use: "delete NAME|ID [--delete-replicas]", Short: "Delete a policy (its replicas are kept unless --delete-replicas)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			if delReplicas {
				err = c.DeletePolicyWithReplicas(ctxOf(cmd), args[0])
			} else {
				err = c.DeletePolicy(ctxOf(cmd), args[0])
			}
			if err != nil {
				return err
			}
			if delReplicas {
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %s; its replicas are being deleted\n", args[0])
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %s; its replicas are kept\n", args[0])
			}
			return nil
		}}
	del.Flags().BoolVar(&delReplicas, "delete-replicas", false, "also delete the replica VMs, their journals (every restore point) and catalog entries")
	status := &cobra.Command{Use: "status NAME|ID", Short: "Overall and per-VM status of a policy", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.client()
			if err != nil {
				return err
			}
			s, err := c.PolicyStatus(ctxOf(cmd), args[0])
			if err != nil {
				return err
			}
			return o.print(cmd.OutOrStdout(), s, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "policy %s (%s): %s\n", s.Name, s.PolicyID, s.Status)
				if s.Reason != "" {
					fmt.Fprintf(tw, "reason: %s\n", s.Reason)
				}
				fmt.Fprintln(tw)
				row(tw, "VM", "NAME", "STATUS", "SOURCE PROXY", "TARGET PROXY", "LAG", "SYNC", "REASON")
				for _, t := range s.Tasks {
					sync := ""
					if t.SyncTotalBytes > 0 {
						sync = fmt.Sprintf("%d%%", t.SyncDoneBytes*100/t.SyncTotalBytes)
					}
					row(tw, t.VMMoRef, t.VMName, t.Status, t.SourceProxy, t.TargetProxy,
						fmt.Sprintf("%.1fs", t.LagSeconds), sync, t.Reason)
				}
			})
		}}
	cmd.AddCommand(create, edit, list, show, toggle("enable", "Enable a policy", true),
		toggle("disable", "Disable a policy", false), del, status)
	return cmd
}
