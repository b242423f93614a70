package vsphere

// Managed object references are carried as their value ("vm-42"); the
// field says the type.

// Disk is one virtual disk of a VM.
type Disk struct {
	Key           int32
	ControllerKey int32
	UnitNumber    int32
	CapacityBytes int64
	Datastore     string // datastore MoRef
	FileName      string // "[ds] vm/vm.vmdk"
	ProfileID     string // storage profile associated, if any
}

// VM is what the controllers need to know of a virtual machine.
type VM struct {
	MoRef        string
	Name         string
	InstanceUUID string
	Host         string
	Cluster      string
	ResourcePool string
	Folder       string
	PowerState   string // poweredOn, poweredOff, suspended
	Disks        []Disk
	Networks     []string // network names of the NICs, in device order
	// Replica is set when the VM carries the replica marker.
	Replica *ReplicaMarker
}

// Disk returns the disk with that key, or nil.
func (v *VM) Disk(key int32) *Disk {
	for i := range v.Disks {
		if v.Disks[i].Key == key {
			return &v.Disks[i]
		}
	}
	return nil
}

// ReplicaMarker is written into a replica's ExtraConfig; it is how a replica
// is found again and never created twice.
type ReplicaMarker struct {
	SourceInstanceUUID string
	PolicyID           string
}

// Datacenter is a vSphere datacenter.
type Datacenter struct {
	MoRef      string
	Name       string
	VMFolder   string
	HostFolder string
}

// Cluster is a compute cluster.
type Cluster struct {
	MoRef        string
	Name         string
	Hosts        []string
	ResourcePool string // root resource pool
}

// Host is an ESXi host.
type Host struct {
	MoRef           string
	Name            string
	Cluster         string // empty for a standalone host
	Datastores      []string
	ConnectionState string
}

// Datastore is a datastore and the hosts that mount it.
type Datastore struct {
	MoRef         string
	Name          string
	URL           string
	Hosts         []string
	CapacityBytes int64
	FreeBytes     int64
}

// ResourcePool is a resource pool and the cluster (or host) that owns it.
type ResourcePool struct {
	MoRef string
	Name  string
	Owner string
}

// Folder is a VM or host folder.
type Folder struct {
	MoRef  string
	Name   string
	Parent string
}

// Inventory is one consistent read of a vCenter's objects.
type Inventory struct {
	Datacenters   []Datacenter
	Clusters      []Cluster
	Hosts         []Host
	Datastores    []Datastore
	ResourcePools []ResourcePool
	Folders       []Folder
	VMs           []VM
}

// VMByName returns the first VM with that name, or nil.
func (inv *Inventory) VMByName(name string) *VM {
	for i := range inv.VMs {
		if inv.VMs[i].Name == name {
			return &inv.VMs[i]
		}
	}
	return nil
}

// ClusterByName returns the cluster with that name, or nil.
func (inv *Inventory) ClusterByName(name string) *Cluster {
	for i := range inv.Clusters {
		if inv.Clusters[i].Name == name {
			return &inv.Clusters[i]
		}
	}
	return nil
}

// HostByName returns the host with that name, or nil.
func (inv *Inventory) HostByName(name string) *Host {
	for i := range inv.Hosts {
		if inv.Hosts[i].Name == name {
			return &inv.Hosts[i]
		}
	}
	return nil
}

// DatastoreByName returns the datastore with that name, or nil.
func (inv *Inventory) DatastoreByName(name string) *Datastore {
	for i := range inv.Datastores {
		if inv.Datastores[i].Name == name {
			return &inv.Datastores[i]
		}
	}
	return nil
}

// FolderByName returns the first folder with that name, or nil.
func (inv *Inventory) FolderByName(name string) *Folder {
	for i := range inv.Folders {
		if inv.Folders[i].Name == name {
			return &inv.Folders[i]
		}
	}
	return nil
}
