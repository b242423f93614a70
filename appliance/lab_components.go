package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/vsphere"
)

// The lab vCenter's inventory (what "continuum vcsim" builds; the names
// are stable, see vcsim's naming functions).
const (
	labSourceCluster   = "src-cluster"
	labTargetCluster   = "dst-cluster"
	labTargetDatastore = "dst-ds-01"
	labDemoVMPrefix    = "app-"
	labProxyVMs        = 2 // proxy VMs per cluster
)

// labProxySpec is one proxy the lab registers and runs. The capacities are
// small on purpose: the first VMs take the physical proxies, the next the
// VM proxies of their own cluster, the last ones a VM proxy of the other
// cluster, so every rank of the automatic selection shows in the table.
type labProxySpec struct {
	Name     string
	Role     model.ProxyRole
	Kind     model.ProxyKind
	Cluster  string // cluster name of a VM proxy
	MaxTasks int
}

// proc is the name of the proxy's process (its log, its state directory).
func (s labProxySpec) proc() string {
	if strings.HasPrefix(s.Name, "proxy-") {
		return s.Name
	}
	return "proxy-" + s.Name
}

var labProxies = []labProxySpec{
	{Name: "phys-src", Role: model.RoleSource, Kind: model.KindPhysical, MaxTasks: 1},
	{Name: "phys-dst", Role: model.RoleTarget, Kind: model.KindPhysical, MaxTasks: 1},
	{Name: "proxy-src-01", Role: model.RoleSource, Kind: model.KindVM, Cluster: labSourceCluster, MaxTasks: 2},
	{Name: "proxy-src-02", Role: model.RoleTarget, Kind: model.KindVM, Cluster: labSourceCluster, MaxTasks: 4},
	{Name: "proxy-dst-01", Role: model.RoleTarget, Kind: model.KindVM, Cluster: labTargetCluster, MaxTasks: 2},
	{Name: "proxy-dst-02", Role: model.RoleSource, Kind: model.KindVM, Cluster: labTargetCluster, MaxTasks: 4},
}

// labCompAddr are the listen addresses of one component process.
type labCompAddr struct {
	Listen string `json:"listen"`
	Admin  string `json:"admin"`
	NBD    string `json:"nbd,omitempty"`
}

// labHost is a simulated ESXi host and the filter the lab runs for it.
type labHost struct {
	Name, MoRef, Cluster string // cluster name
	Addr                 labCompAddr
}

// labInventory is what the lab needs of the lab vCenter.
type labInventory struct {
	Clusters map[string]string // name -> moref
	Hosts    []labHost
	DemoVMs  []string
}

// readLabInventory reads the lab vCenter through the same adapter the
// coordinator uses.
func readLabInventory(ctx context.Context, env map[string]string, log *slog.Logger) (*labInventory, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	vc, err := vsphere.Connect(ctx, vsphere.Config{URL: env["GOVC_URL"], Username: env["GOVC_USERNAME"],
		Password: env["GOVC_PASSWORD"], Insecure: true, KeepAlive: -1, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("connect to the lab vCenter: %w", err)
	}
	defer func() { _ = vc.Close(context.Background()) }()
	inv, err := vc.Inventory(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the lab vCenter inventory: %w", err)
	}
	out := &labInventory{Clusters: map[string]string{}}
	names := map[string]string{}
	for _, c := range inv.Clusters {
		out.Clusters[c.Name] = c.MoRef
		names[c.MoRef] = c.Name
	}
	for _, h := range inv.Hosts {
		out.Hosts = append(out.Hosts, labHost{Name: h.Name, MoRef: h.MoRef, Cluster: names[h.Cluster]})
	}
	sort.Slice(out.Hosts, func(i, j int) bool { return out.Hosts[i].Name < out.Hosts[j].Name })
	for _, v := range inv.VMs {
		if v.Replica == nil && strings.HasPrefix(v.Name, labDemoVMPrefix) {
			out.DemoVMs = append(out.DemoVMs, v.Name)
		}
	}
	sort.Strings(out.DemoVMs)
	return out, nil
}

// componentToken returns the lab's component token, created once and kept
// in DIR/component.token so that a restarted lab reuses it.
func componentToken(ctx context.Context, cl *client.Client, dir string) (string, error) {
	path := filepath.Join(dir, "component.token")
	if b, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b)), nil
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	tok, err := cl.CreateToken(ctx, model.TokenComponent)
	if err != nil {
		return "", fmt.Errorf("create the lab's component token: %w", err)
	}
	if err := os.WriteFile(path, []byte(tok.Token+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write %s: %w", path, err)
	}
	return tok.Token, nil
}

// ensureLabProxies registers the lab's proxies (or corrects their address
// after a lab restart picked new ports) and returns their records by name.
func ensureLabProxies(ctx context.Context, cl *client.Client, vcID string, inv *labInventory, addrs map[string]labCompAddr) (map[string]*model.Proxy, error) {
	have, err := cl.ListProxies(ctx)
	if err != nil {
		return nil, fmt.Errorf("list proxies: %w", err)
	}
	byName := map[string]*model.Proxy{}
	for _, p := range have {
		byName[p.Name] = p
	}
	out := map[string]*model.Proxy{}
	for _, s := range labProxies {
		want := &model.Proxy{Name: s.Name, Role: s.Role, Kind: s.Kind, Address: addrs[s.Name].Listen, MaxTasks: s.MaxTasks}
		if s.Kind == model.KindVM {
			moref, ok := inv.Clusters[s.Cluster]
			if !ok {
				return nil, fmt.Errorf("register proxy %s: the lab vCenter has no cluster %s", s.Name, s.Cluster)
			}
			want.VCenterID, want.ClusterID = vcID, vcID+"/"+moref
		}
		p := byName[s.Name]
		switch {
		case p == nil:
			if p, err = cl.CreateProxy(ctx, want); err != nil {
				return nil, fmt.Errorf("register proxy %s: %w", s.Name, err)
			}
		case p.Address != want.Address || p.ClusterID != want.ClusterID:
			upd := *p
			upd.Address, upd.ClusterID, upd.VCenterID = want.Address, want.ClusterID, want.VCenterID
			if p, err = cl.UpdateProxy(ctx, p.ID, &upd); err != nil {
				return nil, fmt.Errorf("update proxy %s: %w", s.Name, err)
			}
		}
		out[s.Name] = p
	}
	return out, nil
}

// labComponents is what the lab started beside the coordinators.
type labComponents struct {
	Proxies map[string]*model.Proxy // by name
	Hosts   []labHost
	procs   []*labProc
	admins  map[string]string // process name -> admin address
}

// nbdFor returns the NBD address of the filter on a host, given its ID
// ("<vcenter-id>/<moref>"), MoRef or name.
func (lc *labComponents) nbdFor(moref string) string {
	if i := strings.LastIndexByte(moref, '/'); i >= 0 {
		moref = moref[i+1:]
	}
	for _, h := range lc.Hosts {
		if h.MoRef == moref || h.Name == moref {
			return h.Addr.NBD
		}
	}
	return ""
}

// componentSetup is what startLabComponents needs.
type componentSetup struct {
	dir    string
	coords []string // https://host:port of every coordinator
	caPath string
	vcID   string
	inv    *labInventory
	addrs  map[string]labCompAddr // by process name
	sup    *labSupervisor
	log    *slog.Logger
}

// startLabComponents registers the proxies, then starts one supervised
// proxy process per proxy record and one filter process per simulated
// host, all in managed mode: they get their configuration from the
// coordinators with the component token.
func startLabComponents(ctx context.Context, cl *client.Client, s componentSetup) (*labComponents, error) {
	lc := &labComponents{admins: map[string]string{}}
	proxyAddrs := map[string]labCompAddr{}
	for _, p := range labProxies {
		proxyAddrs[p.Name] = s.addrs[p.proc()]
	}
	var err error
	if lc.Proxies, err = ensureLabProxies(ctx, cl, s.vcID, s.inv, proxyAddrs); err != nil {
		return nil, err
	}
	for _, h := range s.inv.Hosts {
		h.Addr = s.addrs["filter-"+h.Name]
		lc.Hosts = append(lc.Hosts, h)
	}
	token, err := componentToken(ctx, cl, s.dir)
	if err != nil {
		return nil, err
	}
	common := func(name string) []string {
		return []string{"--coordinator", strings.Join(s.coords, ","), "--cacert", s.caPath,
			"--state-dir", filepath.Join(s.dir, "components", name)}
	}
	env := []string{"CONTINUUM_COMPONENT_TOKEN=" + token}
	var procs []*labProc
	for _, spec := range labProxies {
		name := spec.proc()
		a := s.addrs[name]
		args := append([]string{"proxy"}, common(name)...)
		args = append(args, "--proxy-id", lc.Proxies[spec.Name].ID, "--listen", a.Listen, "--admin-addr", a.Admin)
		procs = append(procs, &labProc{name: name, args: args, env: env, log: filepath.Join(s.dir, "logs", name+".log"), tier: 2})
		lc.admins[name] = a.Admin
	}
	for _, h := range lc.Hosts {
		name := "filter-" + h.Name
		ds := filepath.Join(s.dir, "datastores", "source")
		if h.Cluster != labSourceCluster {
			ds = filepath.Join(s.dir, "datastores", "target")
		}
		args := append([]string{"filter"}, common(name)...)
		args = append(args, "--host", h.Name, "--vcenter-id", s.vcID, "--datastore", ds,
			"--journal-dir", filepath.Join(s.dir, "journals", h.Name),
			"--listen", h.Addr.Listen, "--nbd-addr", h.Addr.NBD, "--admin-addr", h.Addr.Admin)
		procs = append(procs, &labProc{name: name, args: args, env: env, log: filepath.Join(s.dir, "logs", name+".log"), tier: 2})
		lc.admins[name] = h.Addr.Admin
	}
	for _, d := range []string{"components", "journals", filepath.Join("datastores", "source"), filepath.Join("datastores", "target")} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("create lab directory %s: %w", d, err)
		}
	}
	for _, p := range procs {
		if _, err := s.sup.launch(p); err != nil {
			return nil, err
		}
		s.sup.supervise(p, time.Second, 30*time.Second)
	}
	lc.procs = procs
	return lc, nil
}

// waitHealthy waits until every component answers /healthz on its admin
// address, or d passes; it returns the names of those that did not.
func (lc *labComponents) waitHealthy(ctx context.Context, caPEM []byte, d time.Duration) []string {
	hc := adminHTTPClient(caPEM)
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(d)
	pending := map[string]string{}
	for n, a := range lc.admins {
		pending[n] = a
	}
	for len(pending) > 0 && time.Now().Before(deadline) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		for n, a := range pending {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if probeAdmin(ctx, hc, a) == nil {
					mu.Lock()
					delete(pending, n)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if len(pending) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	var out []string
	for n := range pending {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// adminHTTPClient talks to components' admin listeners: HTTPS with a
// certificate from the cluster CA (the chain is checked, not the name: the
// lab reaches them by loopback address), or plain HTTP.
func adminHTTPClient(caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				if c, err := x509.ParseCertificate(r); err == nil {
					inter.AddCert(c)
				}
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		}}
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{TLSClientConfig: tc,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext}}
}

// probeAdmin GETs /healthz over HTTPS, then over HTTP.
func probeAdmin(ctx context.Context, hc *http.Client, addr string) error {
	var last error
	for _, scheme := range []string{"https", "http"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, scheme+"://"+addr+"/healthz", nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err != nil {
			last = err
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return nil
		}
		last = fmt.Errorf("healthz of %s: %s", addr, resp.Status)
	}
	return last
}
