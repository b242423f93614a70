package vcsim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/vmware/govmomi"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"

	// The SPBM endpoint is registered alongside the vSphere API.
	_ "github.com/vmware/govmomi/pbm/simulator"
)

// Fixed lab credentials: the simulator accepts only this user.
const (
	Username = "administrator@vsphere.local"
	Password = "continuum"
)

// Options sizes the lab inventory. Zero values take the defaults of
// DefaultOptions; a negative VM count means none.
type Options struct {
	// Dir holds the datastore directories. Empty means a temporary
	// directory removed by Close.
	Dir string
	// Listen is the TCP address to serve on; empty means 127.0.0.1:0.
	Listen string

	SourceHosts      int // hosts in the source cluster
	SourceDatastores int // datastores mounted by every source host
	ProtectedVMs     int // VMs in the source cluster, with 1 to 3 disks
	TargetHosts      int
	TargetDatastores int
	ProxyVMs         int // VM proxies per cluster

	// DiskSizesMB is cycled through to size the protected VMs' disks.
	DiskSizesMB []int64

	// Workers creates the protected VMs in parallel.
	Workers int

	// Site limits the inventory to one site, for a lab with a vCenter per
	// site: SiteSource (source cluster and protected VMs) or SiteTarget
	// (target cluster). Empty means both clusters in one vCenter.
	Site string

	// SessionTimeout expires idle sessions, as vCenter does (default:
	// never).
	SessionTimeout time.Duration
}

// Sites of a two-vCenter lab.
const (
	SiteSource = "source"
	SiteTarget = "target"
)

// DefaultOptions is the lab of the product pages: a source cluster of three
// hosts and a target cluster of two, two datastores each.
func DefaultOptions() Options {
	return Options{
		SourceHosts:      3,
		SourceDatastores: 2,
		ProtectedVMs:     4,
		TargetHosts:      2,
		TargetDatastores: 2,
		ProxyVMs:         1,
		DiskSizesMB:      []int64{256, 512, 1024},
		Workers:          4,
	}
}

func (o *Options) defaults() {
	d := DefaultOptions()
	if o.SourceHosts <= 0 {
		o.SourceHosts = d.SourceHosts
	}
	if o.SourceDatastores <= 0 {
		o.SourceDatastores = d.SourceDatastores
	}
	switch {
	case o.ProtectedVMs == 0:
		o.ProtectedVMs = d.ProtectedVMs
	case o.ProtectedVMs < 0: // explicitly none
		o.ProtectedVMs = 0
	}
	if o.TargetHosts <= 0 {
		o.TargetHosts = d.TargetHosts
	}
	if o.TargetDatastores <= 0 {
		o.TargetDatastores = d.TargetDatastores
	}
	switch {
	case o.ProxyVMs == 0:
		o.ProxyVMs = d.ProxyVMs
	case o.ProxyVMs < 0:
		o.ProxyVMs = 0
	}
	if len(o.DiskSizesMB) == 0 {
		o.DiskSizesMB = d.DiskSizesMB
	}
	if o.Workers <= 0 {
		o.Workers = d.Workers
	}
}

// Inventory names used by the lab. They are stable so that scripts and the
// lab supervisor can refer to them.
const (
	DatacenterName    = "DC0"
	SourceClusterName = "src-cluster"
	TargetClusterName = "dst-cluster"
	NetworkName       = "VM Network"
	TargetNetworkName = "DR Network" // on the first target host
)

// SourceHostName and friends name the lab's inventory objects.
func SourceHostName(i int) string      { return fmt.Sprintf("src-esx-%02d", i+1) }
func TargetHostName(i int) string      { return fmt.Sprintf("dst-esx-%02d", i+1) }
func SourceDatastoreName(i int) string { return fmt.Sprintf("src-ds-%02d", i+1) }
func TargetDatastoreName(i int) string { return fmt.Sprintf("dst-ds-%02d", i+1) }
func ProtectedVMName(i int) string     { return fmt.Sprintf("app-%03d", i+1) }
func SourceProxyName(i int) string     { return fmt.Sprintf("proxy-src-%02d", i+1) }
func TargetProxyName(i int) string     { return fmt.Sprintf("proxy-dst-%02d", i+1) }

// Server is a running lab vCenter.
type Server struct {
	URL           *url.URL // https://user:password@host:port/sdk
	Dir           string
	DatastoreRoot string // parent directory of every datastore directory
	Options       Options

	model   *simulator.Model
	server  *simulator.Server
	filters *IoFilterManager
	pbm     *profileAssociations
	hooks   *hooks
	log     *slog.Logger
	tmpDir  bool

	closeOnce sync.Once
}

// Start creates the simulator, registers the CDP extras, serves it over TLS
// on loopback and builds the lab inventory.
func Start(ctx context.Context, opts Options, log *slog.Logger) (*Server, error) {
	opts.defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	listen := opts.Listen
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("start vcsim: listen address %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("start vcsim: listen address %q: only loopback addresses are served", listen)
	}

	if opts.Site != "" && opts.Site != SiteSource && opts.Site != SiteTarget {
		return nil, fmt.Errorf("start vcsim: site %q: %w (want %q or %q)", opts.Site, ErrBadOption, SiteSource, SiteTarget)
	}
	s := &Server{Options: opts, log: log}
	if opts.Dir == "" {
		d, err := os.MkdirTemp("", "continuum-vcsim-")
		if err != nil {
			return nil, fmt.Errorf("start vcsim: %w", err)
		}
		s.Dir, s.tmpDir = d, true
	} else {
		abs, err := filepath.Abs(opts.Dir)
		if err != nil {
			return nil, fmt.Errorf("start vcsim: dir %q: %w", opts.Dir, err)
		}
		if err := os.MkdirAll(abs, 0o755); err != nil {
			return nil, fmt.Errorf("start vcsim: %w", err)
		}
		s.Dir = abs
	}
	s.DatastoreRoot = filepath.Join(s.Dir, "datastores")
	if err := os.MkdirAll(s.DatastoreRoot, 0o755); err != nil {
		s.cleanupDir()
		return nil, fmt.Errorf("start vcsim: %w", err)
	}

	m := simulator.VPX()
	m.Autostart = false
	m.Datacenter = 1
	m.Cluster = 0
	m.ClusterHost = 0
	m.Host = 0
	m.Datastore = 0
	m.Machine = 0
	m.Portgroup = 1
	if err := m.Create(); err != nil {
		s.cleanupDir()
		return nil, fmt.Errorf("start vcsim: create model: %w", err)
	}
	s.model = m
	if opts.SessionTimeout > 0 {
		om := m.Map().OptionManager()
		om.Setting = append(om.Setting, &types.OptionValue{Key: "config.vmacore.soap.sessionTimeout", Value: opts.SessionTimeout.String()})
	}
	m.Service.Listen = &url.URL{Host: net.JoinHostPort(host, port), User: url.UserPassword(Username, Password)}
	m.Service.RegisterEndpoints = true
	m.Service.TLS = new(tls.Config)

	s.filters = registerIoFilterManager(m.Map())
	s.hooks = &hooks{}
	if serialTasks {
		// More specific than the "/sdk" patterns NewServer registers.
		if m.Service.ServeMux == nil {
			m.Service.ServeMux = http.NewServeMux()
		}
		h := serialSDK(m.Service, m.Map())
		m.Service.ServeMux.Handle("POST /sdk", h)
		m.Service.ServeMux.Handle("POST /sdk/vimService", h)
	}
	s.server = m.Service.NewServer()
	s.pbm = registerProfileAssociations(m.Service)
	m.Map().Handler = s.hooks.handle(s.pbm)

	u := *s.server.URL
	u.User = url.UserPassword(Username, Password)
	s.URL = &u

	if err := s.build(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("start vcsim: build inventory: %w", err)
	}
	log.Info("vcsim serving", "url", s.SDKURL(), "datastores", s.DatastoreRoot)
	return s, nil
}

// SDKURL is the /sdk URL without credentials.
func (s *Server) SDKURL() string {
	u := *s.URL
	u.User = nil
	return u.String()
}

// Client logs in to the lab with the fixed credentials.
func (s *Server) Client(ctx context.Context) (*govmomi.Client, error) {
	c, err := govmomi.NewClient(ctx, s.URL, true)
	if err != nil {
		return nil, fmt.Errorf("log in to vcsim: %w", err)
	}
	return c, nil
}

// Service exposes the simulator service to tests in this package's
// consumers that need the raw fault injector.
func (s *Server) Service() *simulator.Service { return s.model.Service }

// Filters is the lab's I/O filter manager.
func (s *Server) Filters() *IoFilterManager { return s.filters }

// AssociatedProfiles returns the storage profiles recorded for a VM disk
// ("vm-42:2000") or a VM home ("vm-42").
func (s *Server) AssociatedProfiles(key string) []string { return s.pbm.get(key) }

// Close stops serving and removes the simulator's state; a temporary Dir is
// removed too.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		if s.server != nil {
			s.server.Close()
		}
		if s.model != nil {
			s.model.Remove()
		}
		s.cleanupDir()
	})
}

func (s *Server) cleanupDir() {
	if s.tmpDir {
		_ = os.RemoveAll(s.Dir)
	}
}

// EnvFile writes the export lines govc and the other roles read.
func (s *Server) EnvFile(path string) error {
	content := fmt.Sprintf("export GOVC_URL=%s\nexport GOVC_USERNAME=%s\nexport GOVC_PASSWORD=%s\nexport GOVC_INSECURE=1\nexport CONTINUUM_VCSIM_DATASTORES=%s\n",
		shellQuote(s.SDKURL()), shellQuote(Username), shellQuote(Password), shellQuote(s.DatastoreRoot))
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func shellQuote(s string) string {
	safe := true
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '/' || r == ':' || r == '.' || r == '-' || r == '_' || r == '@') {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	out := "'"
	for _, r := range s {
		if r == '\'' {
			out += `'\''`
		} else {
			out += string(r)
		}
	}
	return out + "'"
}

// ErrBadOption reports an invalid lab option.
var ErrBadOption = errors.New("invalid lab option")

// fault returns a pointer usable as a simulator task fault.
func systemError(reason string) types.BaseMethodFault {
	return &types.SystemError{Reason: reason}
}

// CertificateFile writes the server's self-signed certificate (PEM) to a
// temporary file and returns its path, for clients that verify the server.
func (s *Server) CertificateFile() (string, error) {
	p, err := s.server.CertificateFile()
	if err != nil {
		return "", fmt.Errorf("vcsim certificate: %w", err)
	}
	return p, nil
}

// Thumbprint is the SHA-1 thumbprint of the server's certificate.
func (s *Server) Thumbprint() string {
	return s.server.CertificateInfo().ThumbprintSHA1
}
