package ova

// PropertyClass is the ProductSection class of every appliance property, so
// a property's fully qualified key is "continuum.<key>".
const PropertyClass = "continuum"

// Property keys, without the class prefix.
const (
	PropRole        = "role"
	PropProxyRole   = "proxy_role"
	PropProxyPeer   = "proxy_peer"
	PropNodeID      = "node_id"
	PropHostname    = "hostname"
	PropIP          = "ip"
	PropNetmask     = "netmask"
	PropGateway     = "gateway"
	PropDNS         = "dns"
	PropNTP         = "ntp"
	PropBootstrap   = "bootstrap"
	PropJoinURL     = "join_address"
	PropJoinToken   = "join_token"
	PropAPIPort     = "api_port"
	PropRaftPort    = "raft_port"
	roleCoordinator = "coordinator"
	roleProxy       = "proxy"
)

// PropertyDef describes one user-configurable OVF property. The descriptor
// and the first-boot parser are both generated from Properties, so the two
// cannot drift apart.
type PropertyDef struct {
	Key         string
	Type        string // OVF type: string, boolean, uint16
	Qualifiers  string // OVF qualifiers, e.g. ValueMap{"a","b"}
	Default     string
	Password    bool
	Category    string
	Label       string
	Description string
}

// FullKey is the fully qualified key vSphere puts in the OVF environment.
func (p PropertyDef) FullKey() string { return PropertyClass + "." + p.Key }

// Properties lists the appliance properties in the order the vSphere
// deployment wizard shows them.
var Properties = []PropertyDef{
	{Key: PropRole, Type: "string", Qualifiers: `ValueMap{"coordinator","proxy"}`, Default: roleCoordinator,
		Category: "1. Role", Label: "Role",
		Description: "coordinator: a node of the coordinator cluster. proxy: a data mover registered with the coordinators."},
	{Key: PropProxyRole, Type: "string", Qualifiers: `ValueMap{"source","target"}`, Default: "source",
		Category: "1. Role", Label: "Proxy side",
		Description: "For the proxy role only: source (near protected VMs) or target (near replicas)."},
	{Key: PropProxyPeer, Type: "string",
		Category: "1. Role", Label: "Proxy peer",
		Description: "For the proxy role only, HOST:PORT of the next hop: the target proxy (source side) or the target filter (target side)."},
	{Key: PropNodeID, Type: "string", Qualifiers: "MinLen(0),MaxLen(63)",
		Category: "1. Role", Label: "Node ID",
		Description: "Unique name of this node in the cluster (letters, digits, '-', '_', '.'). Empty: the hostname."},
	{Key: PropBootstrap, Type: "boolean", Default: "false",
		Category: "2. Cluster", Label: "Bootstrap a new cluster",
		Description: "Coordinator only: start a new cluster with this node as its first member. Leave unchecked to join an existing cluster."},
	{Key: PropJoinURL, Type: "string",
		Category: "2. Cluster", Label: "Join address",
		Description: "HTTPS address of a running coordinator, e.g. https://10.0.0.10:8443. Required unless bootstrapping."},
	{Key: PropJoinToken, Type: "string", Password: true,
		Category: "2. Cluster", Label: "Join token",
		Description: "Join token issued by the running cluster. Required with a join address."},
	{Key: PropAPIPort, Type: "uint16", Default: "8443",
		Category: "2. Cluster", Label: "API port",
		Description: "TCP port of the HTTPS API (coordinator) or of the data path (proxy)."},
	{Key: PropRaftPort, Type: "uint16", Default: "8300",
		Category: "2. Cluster", Label: "Cluster port",
		Description: "TCP port coordinators replicate their state on."},
	{Key: PropHostname, Type: "string",
		Category: "3. Network", Label: "Hostname",
		Description: "Host name of the appliance. Empty: continuum."},
	{Key: PropIP, Type: "string",
		Category: "3. Network", Label: "IP address",
		Description: "Static IPv4 address. Empty: DHCP (the netmask, gateway and DNS fields are then ignored)."},
	{Key: PropNetmask, Type: "string",
		Category: "3. Network", Label: "Netmask",
		Description: "Netmask of the static address, dotted (255.255.255.0) or a prefix length (24)."},
	{Key: PropGateway, Type: "string",
		Category: "3. Network", Label: "Default gateway",
		Description: "Default gateway of the static address. Empty: none."},
	{Key: PropDNS, Type: "string",
		Category: "3. Network", Label: "DNS servers",
		Description: "Comma-separated DNS server addresses for a static address."},
	{Key: PropNTP, Type: "string",
		Category: "3. Network", Label: "NTP servers",
		Description: "Comma-separated NTP server names or addresses. Empty: no time synchronisation."},
}

// propertyDef finds a property by its short key.
func propertyDef(key string) (PropertyDef, bool) {
	for _, p := range Properties {
		if p.Key == key {
			return p, true
		}
	}
	return PropertyDef{}, false
}
