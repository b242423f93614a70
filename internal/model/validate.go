package model

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"time"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$`)

// ValidateName checks a user-facing object name.
func ValidateName(field, name string) error {
	if name == "" {
		return Invalid(field, "required")
	}
	if !nameRE.MatchString(name) {
		return Invalid(field, "must be 1-128 letters, digits, space, '.', '_' or '-', starting with a letter or digit")
	}
	return nil
}

// Limits on policy timing, generous but finite.
const (
	MinRPO = 1 * time.Second
	MaxRPO = 24 * time.Hour
)

// Validate checks a policy's own fields (not references to other objects,
// which need the state: see State.CheckPolicyRefs).
func (p *Policy) Validate() error {
	if err := ValidateName("name", p.Name); err != nil {
		return err
	}
	if p.VCenterID == "" {
		return Invalid("vcenter_id", "required")
	}
	if len(p.VMs) == 0 {
		return Invalid("vms", "at least one VM is required")
	}
	seen := map[string]bool{}
	for i, v := range p.VMs {
		if v.Key() == "" {
			return Invalid(fmt.Sprintf("vms[%d]", i), "needs moref or name")
		}
		if seen[v.Key()] {
			return Invalid(fmt.Sprintf("vms[%d]", i), "duplicate VM %q", v.Key())
		}
		seen[v.Key()] = true
	}
	if p.Target.VCenterID == "" {
		return Invalid("target.vcenter_id", "required")
	}
	if p.Target.Cluster == "" {
		return Invalid("target.cluster", "required")
	}
	if p.Target.Datastore == "" {
		return Invalid("target.datastore", "required")
	}
	switch {
	case p.RPO <= 0:
		return Invalid("rpo", "must be positive")
	case p.RPO.D() < MinRPO:
		return Invalid("rpo", "must be at least %s", MinRPO)
	case p.RPO.D() > MaxRPO:
		return Invalid("rpo", "must be at most %s", MaxRPO)
	}
	if p.ShortTermRetention < p.RPO {
		return Invalid("short_term_retention", "must be at least the RPO (%s)", p.RPO)
	}
	if p.LongTermEvery < 0 {
		return Invalid("long_term_every", "must not be negative")
	}
	if p.LongTermEvery > 0 {
		if p.LongTermEvery < p.RPO {
			return Invalid("long_term_every", "must be at least the RPO (%s)", p.RPO)
		}
		if p.LongTermRetention < p.LongTermEvery {
			return Invalid("long_term_retention", "must be at least long_term_every (%s)", p.LongTermEvery)
		}
	} else if p.LongTermRetention != 0 {
		return Invalid("long_term_retention", "set without long_term_every")
	}
	if p.RPOWarning < 0 {
		return Invalid("rpo_warning", "must not be negative")
	}
	if p.RPOError < 0 {
		return Invalid("rpo_error", "must not be negative")
	}
	if p.RPOWarning > 0 && p.RPOError > 0 && p.RPOError < p.RPOWarning {
		return Invalid("rpo_error", "must be at least rpo_warning (%s)", p.RPOWarning)
	}
	switch p.ProxySelection {
	case SelectAuto:
		if len(p.SourceProxies)+len(p.TargetProxies) > 0 {
			return Invalid("proxy_selection", "proxy lists need proxy_selection \"manual\"")
		}
	case SelectManual:
		if len(p.SourceProxies) == 0 {
			return Invalid("source_proxies", "manual selection needs at least one source proxy")
		}
		if len(p.TargetProxies) == 0 {
			return Invalid("target_proxies", "manual selection needs at least one target proxy")
		}
	default:
		return Invalid("proxy_selection", "must be \"auto\" or \"manual\", got %q", p.ProxySelection)
	}
	return nil
}

// Defaults fills unset optional fields.
func (p *Policy) Defaults() {
	if p.ProxySelection == "" {
		p.ProxySelection = SelectAuto
	}
	if p.Target.ReplicaSuffix == "" {
		p.Target.ReplicaSuffix = "_replica"
	}
	if p.ShortTermRetention == 0 && p.RPO > 0 {
		p.ShortTermRetention = Duration(time.Hour)
		if p.ShortTermRetention < p.RPO {
			p.ShortTermRetention = p.RPO
		}
	}
}

// CheckPolicyRefs checks that a policy's references exist and that its name
// is unique. It is run by the API before proposing and again by the FSM when
// applying, so two racing writers cannot both succeed.
func (s *State) CheckPolicyRefs(p *Policy) error {
	if other := s.PolicyByName(p.Name); other != nil && other.ID != p.ID {
		return Conflict("name", "policy", p.Name)
	}
	if _, ok := s.VCenters[p.VCenterID]; !ok {
		return NotFound("vcenter_id", "vcenter", p.VCenterID)
	}
	if _, ok := s.VCenters[p.Target.VCenterID]; !ok {
		return NotFound("target.vcenter_id", "vcenter", p.Target.VCenterID)
	}
	for i, id := range p.SourceProxies {
		px, ok := s.Proxies[id]
		if !ok {
			return NotFound(fmt.Sprintf("source_proxies[%d]", i), "proxy", id)
		}
		if !px.Role.Serves(RoleSource) {
			return Invalid(fmt.Sprintf("source_proxies[%d]", i), "proxy %q has role %s", id, px.Role)
		}
	}
	for i, id := range p.TargetProxies {
		px, ok := s.Proxies[id]
		if !ok {
			return NotFound(fmt.Sprintf("target_proxies[%d]", i), "proxy", id)
		}
		if !px.Role.Serves(RoleTarget) {
			return Invalid(fmt.Sprintf("target_proxies[%d]", i), "proxy %q has role %s", id, px.Role)
		}
	}
	return nil
}

// Validate checks a proxy's own fields.
func (p *Proxy) Validate() error {
	if err := ValidateName("name", p.Name); err != nil {
		return err
	}
	switch p.Role {
	case RoleSource, RoleTarget, RoleBoth:
	default:
		return Invalid("role", "must be source, target or both, got %q", p.Role)
	}
	switch p.Kind {
	case KindPhysical, KindVM:
	default:
		return Invalid("kind", "must be physical or vm, got %q", p.Kind)
	}
	if p.Kind == KindVM && p.ClusterID == "" {
		return Invalid("cluster_id", "a VM proxy needs the cluster it runs in")
	}
	if _, _, err := net.SplitHostPort(p.Address); err != nil {
		return Invalid("address", "must be host:port: %v", err)
	}
	if p.MaxTasks < 0 {
		return Invalid("max_tasks", "must not be negative")
	}
	return nil
}

// Validate checks a vCenter registration.
func (v *VCenter) Validate() error {
	if err := ValidateName("name", v.Name); err != nil {
		return err
	}
	u, err := url.Parse(v.URL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return Invalid("url", "must be an http(s) URL with a host, got %q", v.URL)
	}
	if v.Username == "" {
		return Invalid("username", "required")
	}
	return nil
}

// Validate checks a traffic rule.
func (r *TrafficRule) Validate() error {
	if err := ValidateName("name", r.Name); err != nil {
		return err
	}
	if _, _, err := net.ParseCIDR(r.SourceCIDR); err != nil {
		return Invalid("source_cidr", "not a CIDR: %q", r.SourceCIDR)
	}
	if _, _, err := net.ParseCIDR(r.TargetCIDR); err != nil {
		return Invalid("target_cidr", "not a CIDR: %q", r.TargetCIDR)
	}
	if r.ThrottleBytesPerSec < 0 {
		return Invalid("throttle_bytes_per_sec", "must not be negative")
	}
	if !ValidHostTraffic(r.HostTraffic) {
		return Invalid("host_traffic", "%q is neither %q nor %q", r.HostTraffic, HostTrafficEncrypted, HostTrafficIntegrity)
	}
	return nil
}
