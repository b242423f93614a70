package proxy

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// sourceRule is a parsed traffic rule with its own token bucket.
type sourceRule struct {
	rule   model.TrafficRule
	src    netip.Prefix // invalid: any address
	dst    netip.Prefix
	bucket *sourceBucket // nil: unlimited
}

// trafficPolicy is what one connection to a target proxy applies.
type trafficPolicy struct {
	rule   string // "" for the process defaults
	sealer *wire.Sealer
	bucket *sourceBucket
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	if !strings.Contains(s, "/") {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return p.Masked(), nil
}

// compileRules checks the rules; an encrypting rule needs a key.
func compileRules(rules []model.TrafficRule, sealer *wire.Sealer) ([]*sourceRule, error) {
	out := make([]*sourceRule, 0, len(rules))
	for i, r := range rules {
		name := r.Name
		if name == "" {
			name = "#" + strconv.Itoa(i+1)
		}
		src, err := parsePrefix(r.SourceCIDR)
		if err != nil {
			return nil, fmt.Errorf("traffic rule %s: source_cidr %q: %w", name, r.SourceCIDR, err)
		}
		dst, err := parsePrefix(r.TargetCIDR)
		if err != nil {
			return nil, fmt.Errorf("traffic rule %s: target_cidr %q: %w", name, r.TargetCIDR, err)
		}
		if r.ThrottleBytesPerSec < 0 {
			return nil, fmt.Errorf("traffic rule %s: negative throttle %d", name, r.ThrottleBytesPerSec)
		}
		if r.Encrypt && sealer == nil {
			return nil, fmt.Errorf("traffic rule %s encrypts but no encryption key is configured", name)
		}
		if !model.ValidHostTraffic(r.HostTraffic) {
			return nil, fmt.Errorf("traffic rule %s: host_traffic %q is neither %q nor %q", name, r.HostTraffic, model.HostTrafficEncrypted, model.HostTrafficIntegrity)
		}
		r.Name = name
		sr := &sourceRule{rule: r, src: src, dst: dst}
		if r.ThrottleBytesPerSec > 0 {
			sr.bucket = newSourceBucket(r.ThrottleBytesPerSec)
		}
		out = append(out, sr)
	}
	return out, nil
}

func prefixHas(p netip.Prefix, a netip.Addr) bool {
	return !p.IsValid() || p.Contains(a)
}

// matchRule returns the first rule whose source CIDR holds local and whose
// target CIDR holds remote, or nil.
func matchRule(rules []*sourceRule, local, remote netip.Addr) *sourceRule {
	local, remote = local.Unmap(), remote.Unmap()
	for _, r := range rules {
		if prefixHas(r.src, local) && prefixHas(r.dst, remote) {
			return r
		}
	}
	return nil
}

// hostIntegrity says whether a connection between a host's filter and this
// proxy may carry integrity frames instead of TLS (wire.Conn
// AgreeIntegrity, RequestIntegrity): the first rule whose source CIDR holds
// the sending end and whose target CIDR holds the receiving end says
// host_traffic=integrity. Without such a rule the connection stays
// encrypted.
func hostIntegrity(rules []*sourceRule, sender, receiver net.Addr) bool {
	r := matchRule(rules, addrOf(sender), addrOf(receiver))
	return r != nil && r.rule.HostTraffic == model.HostTrafficIntegrity
}

func addrOf(a net.Addr) netip.Addr {
	if t, ok := a.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(t.IP)
		return ip.Unmap()
	}
	if ap, err := netip.ParseAddrPort(a.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// policyFor picks encryption and throttle for a connection to a target
// proxy: the first matching rule, else the process defaults.
func (p *SourceProxy) policyFor(nc net.Conn) trafficPolicy {
	if r := matchRule(p.rules, addrOf(nc.LocalAddr()), addrOf(nc.RemoteAddr())); r != nil {
		pol := trafficPolicy{rule: r.rule.Name, bucket: r.bucket}
		if r.rule.Encrypt {
			pol.sealer = p.cfg.Sealer
		}
		return pol
	}
	return trafficPolicy{sealer: p.cfg.Sealer, bucket: p.bucket}
}

// ParseTrafficRule reads a rule from a flag value:
// "name=wan,source=10.0.0.0/8,target=192.168.0.0/16,encrypt=true,throttle=1048576"
// (and host_traffic=integrity for the hops between hosts and proxies).
func ParseTrafficRule(s string) (model.TrafficRule, error) {
	var r model.TrafficRule
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok {
			return r, fmt.Errorf("traffic rule %q: %q is not key=value", s, kv)
		}
		switch k {
		case "name":
			r.Name = v
		case "source", "source_cidr":
			r.SourceCIDR = v
		case "target", "target_cidr":
			r.TargetCIDR = v
		case "encrypt":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return r, fmt.Errorf("traffic rule %q: encrypt: %w", s, err)
			}
			r.Encrypt = b
		case "throttle", "throttle_bytes_per_sec":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return r, fmt.Errorf("traffic rule %q: throttle: %w", s, err)
			}
			r.ThrottleBytesPerSec = n
		case "host_traffic":
			r.HostTraffic = v
		default:
			return r, fmt.Errorf("traffic rule %q: unknown key %q", s, k)
		}
	}
	// the key is checked when the proxy starts
	if _, err := compileRules([]model.TrafficRule{{Name: r.Name, SourceCIDR: r.SourceCIDR, TargetCIDR: r.TargetCIDR,
		ThrottleBytesPerSec: r.ThrottleBytesPerSec, HostTraffic: r.HostTraffic}}, nil); err != nil {
		return r, err
	}
	return r, nil
}

// trafficRulesValue is the repeatable --traffic-rule flag.
type trafficRulesValue struct{ rules *[]model.TrafficRule }

func (v trafficRulesValue) String() string {
	if v.rules == nil {
		return ""
	}
	parts := make([]string, 0, len(*v.rules))
	for _, r := range *v.rules {
		part := fmt.Sprintf("name=%s,source=%s,target=%s,encrypt=%t,throttle=%d",
			r.Name, r.SourceCIDR, r.TargetCIDR, r.Encrypt, r.ThrottleBytesPerSec)
		if r.HostTraffic != "" {
			part += ",host_traffic=" + r.HostTraffic
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, ";")
}
func (v trafficRulesValue) Type() string { return "rule" }
func (v trafficRulesValue) Set(s string) error {
	for _, one := range strings.Split(s, ";") {
		if one == "" {
			continue
		}
		r, err := ParseTrafficRule(one)
		if err != nil {
			return err
		}
		*v.rules = append(*v.rules, r)
	}
	return nil
}
