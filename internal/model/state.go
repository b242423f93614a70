package model

// State is the whole replicated configuration held by the raft FSM. Maps are
// keyed by ID. Readers get it under the store's read lock and must not keep
// or mutate it; Clone gives a private copy.
type State struct {
	VCenters      map[string]*VCenter      `json:"vcenters"`
	VCDServers    map[string]*VCDServer    `json:"vcd_servers"`
	Clusters      map[string]*Cluster      `json:"clusters"`
	Hosts         map[string]*Host         `json:"hosts"`
	Proxies       map[string]*Proxy        `json:"proxies"`
	Policies      map[string]*Policy       `json:"policies"`
	Tasks         map[string]*VMTask       `json:"tasks"`
	Replicas      map[string]*Replica      `json:"replicas"`
	RestorePoints map[string]*RestorePoint `json:"restore_points"`
	TrafficRules  map[string]*TrafficRule  `json:"traffic_rules"`
	Tenants       map[string]*Tenant       `json:"tenants"`
	Tokens        map[string]*Token        `json:"tokens"`
	Coordinators  map[string]*Coordinator  `json:"coordinators"`
}

// NewState returns an empty state with every map allocated.
func NewState() *State {
	return &State{
		VCenters:      map[string]*VCenter{},
		VCDServers:    map[string]*VCDServer{},
		Clusters:      map[string]*Cluster{},
		Hosts:         map[string]*Host{},
		Proxies:       map[string]*Proxy{},
		Policies:      map[string]*Policy{},
		Tasks:         map[string]*VMTask{},
		Replicas:      map[string]*Replica{},
		RestorePoints: map[string]*RestorePoint{},
		TrafficRules:  map[string]*TrafficRule{},
		Tenants:       map[string]*Tenant{},
		Tokens:        map[string]*Token{},
		Coordinators:  map[string]*Coordinator{},
	}
}

// PolicyByName finds a policy by its unique name.
func (s *State) PolicyByName(name string) *Policy {
	for _, p := range s.Policies {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// ProxyByName finds a proxy by its unique name.
func (s *State) ProxyByName(name string) *Proxy {
	for _, p := range s.Proxies {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// VCenterByName finds a vCenter by its unique name.
func (s *State) VCenterByName(name string) *VCenter {
	for _, v := range s.VCenters {
		if v.Name == name {
			return v
		}
	}
	return nil
}
