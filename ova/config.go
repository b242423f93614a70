package ova

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Config is the validated appliance configuration taken from the OVF
// properties.
type Config struct {
	Role      string // "coordinator" or "proxy"
	ProxyRole string // "source" or "target", proxy role only
	ProxyPeer string // HOST:PORT of the next hop, proxy role only
	NodeID    string
	Hostname  string

	// Network: DHCP when IP is nil.
	IP      net.IP
	Mask    net.IPMask
	Gateway net.IP
	DNS     []net.IP
	NTP     []string

	Bootstrap bool
	JoinURL   string
	JoinToken string
	APIPort   int
	RaftPort  int
}

// DHCP reports whether the address comes from DHCP.
func (c *Config) DHCP() bool { return c.IP == nil }

// PropertyError names one wrong property, with the value found and why it
// is wrong, in words an administrator can act on.
type PropertyError struct {
	Key    string // fully qualified
	Value  string
	Reason string
}

func (e PropertyError) Error() string {
	if e.Value == "" {
		return fmt.Sprintf("%s: %s", e.Key, e.Reason)
	}
	return fmt.Sprintf("%s = %q: %s", e.Key, e.Value, e.Reason)
}

// ConfigError lists every wrong property at once, so that the administrator
// fixes them in one pass.
type ConfigError struct{ Problems []PropertyError }

func (e *ConfigError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.Error()
	}
	return "invalid appliance properties: " + strings.Join(lines, "; ")
}

var (
	nodeIDRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	labelRe  = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
)

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !labelRe.MatchString(l) {
			return false
		}
	}
	return true
}

// ParseConfig validates the appliance properties of an OVF environment. It
// reports every wrong or missing property in a *ConfigError. Properties of
// other classes are ignored; an absent optional property takes the
// descriptor's default; the role must be present.
func ParseConfig(props map[string]string) (*Config, error) {
	var probs []PropertyError
	bad := func(key, value, format string, args ...any) {
		probs = append(probs, PropertyError{Key: PropertyClass + "." + key, Value: value, Reason: fmt.Sprintf(format, args...)})
	}
	get := func(key string) (string, bool) {
		v, ok := props[PropertyClass+"."+key]
		if !ok {
			def, _ := propertyDef(key)
			return def.Default, false
		}
		return strings.TrimSpace(v), true
	}
	c := &Config{}

	role, ok := get(PropRole)
	switch {
	case !ok:
		bad(PropRole, "", "missing: must be coordinator or proxy")
	case role != roleCoordinator && role != roleProxy:
		bad(PropRole, role, "must be coordinator or proxy")
	}
	c.Role = role
	if role == roleProxy {
		c.ProxyRole, _ = get(PropProxyRole)
		if c.ProxyRole != "source" && c.ProxyRole != "target" {
			bad(PropProxyRole, c.ProxyRole, "must be source or target")
		}
		c.ProxyPeer, _ = get(PropProxyPeer)
		if h, p, err := net.SplitHostPort(c.ProxyPeer); err != nil || h == "" || p == "" {
			bad(PropProxyPeer, c.ProxyPeer, "required for a proxy: HOST:PORT of the target proxy (source side) or of the target filter (target side)")
		} else if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			bad(PropProxyPeer, c.ProxyPeer, "port must be 1 to 65535")
		}
	}

	c.Hostname, _ = get(PropHostname)
	if c.Hostname != "" && !validHostname(c.Hostname) {
		bad(PropHostname, c.Hostname, "not a valid host name (letters, digits and '-', dot-separated)")
	}
	c.NodeID, _ = get(PropNodeID)
	if c.NodeID == "" && c.Hostname != "" && validHostname(c.Hostname) {
		c.NodeID = strings.SplitN(c.Hostname, ".", 2)[0]
	}
	switch {
	case c.NodeID == "" && c.Hostname == "":
		bad(PropNodeID, "", "empty, and no hostname to use instead: set a node ID unique in the cluster")
	case c.NodeID != "" && !nodeIDRe.MatchString(c.NodeID):
		bad(PropNodeID, c.NodeID, "must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
	}
	if c.Hostname == "" {
		c.Hostname = "continuum"
	}

	// Network.
	if ip, _ := get(PropIP); ip != "" {
		parsed := net.ParseIP(ip).To4()
		if parsed == nil {
			bad(PropIP, ip, "not an IPv4 address (leave empty for DHCP)")
		}
		c.IP = parsed
		mask, _ := get(PropNetmask)
		c.Mask = parseMask(mask)
		if c.Mask == nil {
			bad(PropNetmask, mask, "required with a static IP: dotted netmask (255.255.255.0) or prefix length (24)")
		}
		if gw, _ := get(PropGateway); gw != "" {
			c.Gateway = net.ParseIP(gw).To4()
			switch {
			case c.Gateway == nil:
				bad(PropGateway, gw, "not an IPv4 address")
			case c.IP != nil && c.Mask != nil && !(&net.IPNet{IP: c.IP.Mask(c.Mask), Mask: c.Mask}).Contains(c.Gateway):
				bad(PropGateway, gw, "not in the subnet of %s/%s", ip, mask)
			}
		}
		if dns, _ := get(PropDNS); dns != "" {
			for _, s := range splitList(dns) {
				if a := net.ParseIP(s); a != nil {
					c.DNS = append(c.DNS, a)
				} else {
					bad(PropDNS, dns, "%q is not an IP address", s)
				}
			}
		}
	}
	if ntp, _ := get(PropNTP); ntp != "" {
		for _, s := range splitList(ntp) {
			if net.ParseIP(s) == nil && !validHostname(s) {
				bad(PropNTP, ntp, "%q is neither a host name nor an IP address", s)
				continue
			}
			c.NTP = append(c.NTP, s)
		}
	}

	c.APIPort = parsePort(get, PropAPIPort, bad)
	c.RaftPort = parsePort(get, PropRaftPort, bad)
	if role == roleCoordinator && c.APIPort != 0 && c.APIPort == c.RaftPort {
		bad(PropRaftPort, strconv.Itoa(c.RaftPort), "must differ from %s.%s", PropertyClass, PropAPIPort)
	}

	// Cluster membership.
	if b, _ := get(PropBootstrap); b != "" {
		v, err := strconv.ParseBool(b)
		if err != nil {
			bad(PropBootstrap, b, "must be true or false")
		}
		c.Bootstrap = v
	}
	c.JoinURL, _ = get(PropJoinURL)
	c.JoinToken, _ = get(PropJoinToken)
	if role == roleProxy && c.Bootstrap {
		bad(PropBootstrap, "true", "only a coordinator can bootstrap a cluster")
	}
	if c.Bootstrap && role == roleCoordinator {
		if c.JoinURL != "" {
			bad(PropJoinURL, c.JoinURL, "must be empty when bootstrapping a new cluster")
		}
	} else if role == roleCoordinator || role == roleProxy {
		switch {
		case c.JoinURL == "":
			bad(PropJoinURL, "", "required: the HTTPS address of a running coordinator (or set bootstrap for the first node)")
		default:
			if u, err := url.Parse(c.JoinURL); err != nil || u.Scheme != "https" || u.Host == "" || u.Port() == "" {
				bad(PropJoinURL, c.JoinURL, "must look like https://HOST:PORT")
			}
		}
		// Never echo a token's value.
		if c.JoinToken == "" {
			bad(PropJoinToken, "", "required to join a cluster")
		} else if _, err := parseJoinToken(c.JoinToken); err != nil {
			bad(PropJoinToken, "", "%v", err)
		}
	}
	if len(probs) > 0 {
		return nil, &ConfigError{Problems: probs}
	}
	return c, nil
}

func parsePort(get func(string) (string, bool), key string, bad func(key, value, format string, args ...any)) int {
	s, _ := get(key)
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		bad(key, s, "must be a TCP port, 1 to 65535")
		return 0
	}
	return n
}

func parseMask(s string) net.IPMask {
	if s == "" {
		return nil
	}
	if n, err := strconv.Atoi(strings.TrimPrefix(s, "/")); err == nil {
		if n < 1 || n > 32 {
			return nil
		}
		return net.CIDRMask(n, 32)
	}
	ip := net.ParseIP(s).To4()
	if ip == nil {
		return nil
	}
	m := net.IPMask(ip)
	if ones, bits := m.Size(); bits == 0 || ones == 0 {
		return nil // not contiguous
	}
	return m
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == ';' }) {
		out = append(out, f)
	}
	return out
}

// ProxyAdminPort serves a proxy appliance's /healthz and /metrics.
const ProxyAdminPort = 9443

// DataDir is where the appliance keeps its state (a partition of the disk).
const DataDir = "/data"

// RoleArgs is the continuum command line (without the program name) that
// runs the configured role, once the node's address is known.
func (c *Config) RoleArgs(addr net.IP) []string {
	host := addr.String()
	switch c.Role {
	case roleCoordinator:
		args := []string{"coordinator", "--node-id", c.NodeID, "--data-dir", DataDir + "/coordinator",
			"--api-addr", net.JoinHostPort(host, strconv.Itoa(c.APIPort)),
			"--raft-addr", net.JoinHostPort(host, strconv.Itoa(c.RaftPort))}
		if c.Bootstrap {
			return append(args, "--bootstrap")
		}
		return append(args, "--join", c.JoinURL, "--join-token", c.JoinToken)
	case roleProxy:
		dir := DataDir + "/proxy"
		args := []string{"proxy", "--role", c.ProxyRole, "--node-id", c.NodeID,
			"--listen", net.JoinHostPort(host, strconv.Itoa(c.APIPort)),
			"--admin-addr", net.JoinHostPort(host, strconv.Itoa(ProxyAdminPort)),
			"--ca", dir + "/ca.pem", "--cert", dir + "/cert.pem", "--key", dir + "/key.pem"}
		if c.ProxyRole == "source" {
			return append(args, "--target", c.ProxyPeer, "--spill-dir", dir+"/spill")
		}
		return append(args, "--target-filter", c.ProxyPeer)
	}
	return nil
}
