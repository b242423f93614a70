package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"slices"
	"sort"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vsphere"
)

func init() {
	schemaTypes["ComponentReport"] = reflect.TypeOf(model.ComponentReport{})
	schemaTypes["ComponentConfig"] = reflect.TypeOf(model.ComponentConfig{})
}

// HostLister finds the hosts of a registered vCenter, so that a filter
// heartbeat from a host the state does not know yet can create it. The
// server's Inventory provides it when it implements this interface
// (*VCenterInventory does).
type HostLister interface {
	VCenterHosts(ctx context.Context, vcenterID string) ([]vsphere.Host, error)
}

// VCenterHosts implements HostLister.
func (v *VCenterInventory) VCenterHosts(ctx context.Context, vcenterID string) ([]vsphere.Host, error) {
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = 20 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := v.Get(ctx, vcenterID)
	if err != nil {
		return nil, err
	}
	// A filter's first heartbeat needs only the hosts: the whole inventory
	// of a large vCenter is mostly VMs and their disks.
	if hl, ok := c.(interface {
		Hosts(ctx context.Context) ([]vsphere.Host, error)
	}); ok {
		return hl.Hosts(ctx)
	}
	inv, err := c.Inventory(ctx)
	if err != nil {
		return nil, err
	}
	return inv.Hosts, nil
}

// componentHeartbeat records a filter's or proxy's heartbeat and the status
// of the VMs it reports (one raft entry), and answers with the
// configuration that component must run.
//
// A proxy's data address stays the one its registration holds (an
// administrator's choice, used by proxy selection and traffic rules); the
// address it reports is not stored. A filter's addresses are stored on its
// host, which is created from the vCenter inventory on first contact.
func (s *Server) componentHeartbeat(r *http.Request) (int, any, error) {
	var rep model.ComponentReport
	if err := decodeBody(r, &rep); err != nil {
		return 0, nil, err
	}
	if err := checkReport(&rep); err != nil {
		return 0, nil, err
	}
	cmd := raftstore.ComponentHeartbeat{Kind: rep.Kind, At: time.Now().UTC(), VMs: rep.VMs}
	addrChanged := false
	switch rep.Kind {
	case model.ComponentProxy:
		var px *model.Proxy
		s.store.Read(func(st *model.State) {
			if o := find(st.Proxies, rep.ID, proxyName); o != nil {
				c := *o
				px = &c
			}
		})
		if px == nil {
			return 0, nil, model.NotFound("id", "proxy", rep.ID)
		}
		if rep.DataAddr != "" && rep.DataAddr != px.Address {
			s.log.Debug("proxy reports a data address other than its registration's; the registration's is kept",
				"proxy", px.Name, "reported", rep.DataAddr, "registered", px.Address)
		}
		if err := s.checkComponentCert(r, rep.Kind, rep.ID, []string{px.ID, px.Name}); err != nil {
			return 0, nil, err
		}
		cmd.ID = px.ID
	case model.ComponentFilter:
		h, create, err := s.resolveHost(r.Context(), &rep)
		if err != nil {
			return 0, nil, err
		}
		cmd.ID = h.ID
		cmd.DataAddr, cmd.AdminAddr, cmd.NBDAddr = rep.DataAddr, rep.AdminAddr, rep.NBDAddr
		// The filter's data address is in the task paths of the replicas
		// on its host: a new one changes its configuration.
		addrChanged = create || h.FilterAddr != rep.DataAddr
		if err := s.checkComponentCert(r, rep.Kind, rep.ID, []string{h.ID, h.MoRef, h.Name}); err != nil {
			return 0, nil, err
		}
		if create {
			// The new record already carries what the heartbeat reports.
			h.FilterAddr, h.FilterAdmin, h.FilterNBD, h.LastHeartbeat = rep.DataAddr, rep.AdminAddr, rep.NBDAddr, cmd.At
			if err := s.apply(r, raftstore.PutHost{Host: *h}); err != nil {
				return 0, nil, fmt.Errorf("record host %s of filter %s: %w", h.ID, rep.ID, err)
			}
			s.log.Info("filter reported from a host new to the state; host recorded", "host", h.ID, "name", h.Name, "cluster", h.ClusterID)
		}
	}
	// This node is the leader: its state is current. The configuration is
	// computed once per heartbeat (it hashes every task of the component),
	// and again only when the heartbeat itself changes it.
	keys := controllers.DeriveKeys(s.store.ClusterKey())
	cfg := s.currentConfig(rep.Kind, cmd.ID, keys)
	cmd.VMs = currentReports(cfg, rep.VMs)
	if err := s.apply(r, cmd); err != nil {
		return 0, nil, fmt.Errorf("record heartbeat of %s %s: %w", rep.Kind, rep.ID, err)
	}
	if addrChanged {
		cfg = s.currentConfig(rep.Kind, cmd.ID, keys)
	}
	if cfg.Version == rep.ConfigVersion {
		// The component runs it already: the tasks (every one of them,
		// each heartbeat) need not travel again.
		cfg = model.ComponentConfig{Version: cfg.Version, Kind: cfg.Kind, ID: cfg.ID, Unchanged: true}
	}
	return http.StatusOK, compact{cfg}, nil
}

// currentConfig is the configuration component id must run now.
func (s *Server) currentConfig(kind model.ComponentKind, id string, keys func(string) []byte) model.ComponentConfig {
	var cfg model.ComponentConfig
	s.store.Read(func(st *model.State) { cfg = controllers.ComponentConfig(st, kind, id, keys) })
	return cfg
}

// currentReports drops the VM reports made under a task path other than
// the current one: a filter that has not applied an added disk yet would
// otherwise report the VM Syncing with the new disk unsent.
func currentReports(cfg model.ComponentConfig, reps []model.VMReport) []model.VMReport {
	if len(reps) == 0 {
		return reps
	}
	current := make(map[string]string, len(cfg.Tasks))
	for _, t := range cfg.Tasks {
		current[t.TaskID] = model.TaskPathVersion(t)
	}
	out := reps[:0:0]
	for _, r := range reps {
		if r.PathVersion != "" && r.PathVersion != current[r.TaskID] {
			continue
		}
		out = append(out, r)
	}
	return out
}

// checkReport validates a heartbeat's own fields.
func checkReport(rep *model.ComponentReport) error {
	switch rep.Kind {
	case model.ComponentFilter, model.ComponentProxy:
	default:
		return model.Invalid("kind", "must be %q or %q, got %q", model.ComponentFilter, model.ComponentProxy, rep.Kind)
	}
	if rep.ID == "" {
		return model.Invalid("id", "required")
	}
	for _, a := range []struct{ field, addr string }{{"data_addr", rep.DataAddr}, {"admin_addr", rep.AdminAddr}, {"nbd_addr", rep.NBDAddr}} {
		if a.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "" {
			return model.Invalid(a.field, "must be host:port, got %q", a.addr)
		}
	}
	return raftstore.CheckVMReports(rep.Kind, rep.VMs)
}

// checkComponentCert refuses a component certificate that names another
// component: a component that authenticated with its certificate reports
// for itself only. Tokens are not bound to a component.
func (s *Server) checkComponentCert(r *http.Request, kind model.ComponentKind, id string, names []string) error {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || r.Header.Get(forwardedHeader) != "" {
		return nil
	}
	leaf := r.TLS.VerifiedChains[0][0]
	if !pki.IsComponent(leaf) || slices.Contains(names, leaf.Subject.CommonName) {
		return nil
	}
	return errForbidden(fmt.Sprintf("the certificate of %q may not report for %s %q", leaf.Subject.CommonName, kind, id))
}

// resolveHost finds the filter's host in the state by ID, MoRef or name,
// else in the vCenter inventory (create is then true: the host must be
// recorded). Without a vCenter ID, the one registered vCenter, or the one
// whose hosts match, is meant.
func (s *Server) resolveHost(ctx context.Context, rep *model.ComponentReport) (h *model.Host, create bool, err error) {
	var vcs []string
	var inState []*model.Host
	clusters := map[string]model.Cluster{}
	s.store.Read(func(st *model.State) {
		if rep.VCenterID != "" {
			if v := find(st.VCenters, rep.VCenterID, func(v *model.VCenter) string { return v.Name }); v != nil {
				vcs = []string{v.ID}
			}
		} else {
			for id := range st.VCenters {
				vcs = append(vcs, id)
			}
		}
		for _, o := range st.Hosts {
			if slices.Contains(vcs, o.VCenterID) && (o.ID == rep.ID || o.MoRef == rep.ID || o.Name == rep.ID) {
				c := *o
				inState = append(inState, &c)
			}
		}
		for id, c := range st.Clusters {
			clusters[id] = *c
		}
	})
	sort.Strings(vcs)
	switch {
	case rep.VCenterID != "" && len(vcs) == 0:
		return nil, false, model.NotFound("vcenter_id", "vcenter", rep.VCenterID)
	case len(vcs) == 0:
		return nil, false, fmt.Errorf("resolve host %q: no vCenter is registered: %w", rep.ID, model.NotFound("id", "host", rep.ID))
	}
	switch len(inState) {
	case 1:
		return inState[0], false, nil
	case 0:
	default:
		return nil, false, model.Invalid("vcenter_id", "host %q is known in several vCenters; name the vCenter", rep.ID)
	}
	lister, ok := s.cfg.Inventory.(HostLister)
	if !ok {
		return nil, false, model.NotFound("id", "host", rep.ID)
	}
	var found []*model.Host
	var unreachable []error
	for _, vc := range vcs {
		hosts, err := lister.VCenterHosts(ctx, vc)
		if err != nil {
			if errors.Is(err, model.ErrNotFound) && !errors.Is(err, vsphere.ErrNotFound) {
				continue // unregistered meanwhile
			}
			unreachable = append(unreachable, fmt.Errorf("vCenter %s: %w", vc, err))
			continue
		}
		for _, vh := range hosts {
			if vh.MoRef != rep.ID && vh.Name != rep.ID && vc+"/"+vh.MoRef != rep.ID {
				continue
			}
			nh := &model.Host{ID: vc + "/" + vh.MoRef, VCenterID: vc, MoRef: vh.MoRef, Name: vh.Name, FilterState: model.FilterNotInstalled}
			if vh.Cluster != "" {
				nh.ClusterID = vc + "/" + vh.Cluster
				if c, ok := clusters[nh.ClusterID]; ok && c.FilterState != "" {
					nh.FilterState = c.FilterState
				}
			}
			found = append(found, nh)
			break
		}
	}
	switch {
	case len(found) == 1:
		return found[0], true, nil
	case len(found) > 1:
		return nil, false, model.Invalid("vcenter_id", "host %q exists in several vCenters; name the vCenter", rep.ID)
	case len(unreachable) > 0:
		return nil, false, errUnavailable(fmt.Sprintf("resolve host %q: %v; retry", rep.ID, errors.Join(unreachable...)))
	}
	return nil, false, model.NotFound("id", "host", rep.ID)
}
