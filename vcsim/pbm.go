package vcsim

import (
	"fmt"
	"sync"
	"time"

	"github.com/vmware/govmomi/pbm"
	pbmmethods "github.com/vmware/govmomi/pbm/methods"
	pbmsim "github.com/vmware/govmomi/pbm/simulator"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// profileAssociations records which storage profile ReconfigVM applied to
// which VM home and disk, because the simulator accepts profile specs but
// does not store them.
type profileAssociations struct {
	mu    sync.Mutex
	byKey map[string][]string // "vm-42" or "vm-42:2000" -> profile IDs
}

func (a *profileAssociations) set(key string, ids []string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(ids) == 0 {
		delete(a.byKey, key)
		return
	}
	a.byKey[key] = ids
}

func (a *profileAssociations) get(key string) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.byKey[key]...)
}

// record notes the profile specs of a ReconfigVM request.
func (a *profileAssociations) record(vm types.ManagedObjectReference, spec *types.VirtualMachineConfigSpec) {
	if len(spec.VmProfile) > 0 {
		a.set(vm.Value, profileIDs(spec.VmProfile))
	}
	for _, dc := range spec.DeviceChange {
		c := dc.GetVirtualDeviceConfigSpec()
		if _, ok := c.Device.(*types.VirtualDisk); !ok {
			continue
		}
		key := fmt.Sprintf("%s:%d", vm.Value, c.Device.GetVirtualDevice().Key)
		if c.Operation == types.VirtualDeviceConfigSpecOperationRemove {
			a.set(key, nil)
			continue
		}
		if len(c.Profile) > 0 {
			a.set(key, profileIDs(c.Profile))
		}
	}
}

func profileIDs(specs []types.BaseVirtualMachineProfileSpec) []string {
	var ids []string
	for _, s := range specs {
		if d, ok := s.(*types.VirtualMachineDefinedProfileSpec); ok && d.ProfileId != "" {
			ids = append(ids, d.ProfileId)
		}
	}
	return ids
}

// ProfileManager is the simulator's SPBM profile manager with associations.
type ProfileManager struct {
	*pbmsim.ProfileManager
	assoc *profileAssociations
}

// PbmQueryAssociatedProfile answers from the recorded associations.
func (m *ProfileManager) PbmQueryAssociatedProfile(req *pbmtypes.PbmQueryAssociatedProfile) soap.HasFault {
	body := &pbmmethods.PbmQueryAssociatedProfileBody{Res: &pbmtypes.PbmQueryAssociatedProfileResponse{}}
	for _, id := range m.assoc.get(req.Entity.Key) {
		body.Res.Returnval = append(body.Res.Returnval, pbmtypes.PbmProfileId{UniqueId: id})
	}
	return body
}

// PbmQueryAssociatedProfiles answers from the recorded associations.
func (m *ProfileManager) PbmQueryAssociatedProfiles(req *pbmtypes.PbmQueryAssociatedProfiles) soap.HasFault {
	body := &pbmmethods.PbmQueryAssociatedProfilesBody{Res: &pbmtypes.PbmQueryAssociatedProfilesResponse{}}
	for _, e := range req.Entities {
		r := pbmtypes.PbmQueryProfileResult{Object: e}
		for _, id := range m.assoc.get(e.Key) {
			r.ProfileId = append(r.ProfileId, pbmtypes.PbmProfileId{UniqueId: id})
		}
		body.Res.Returnval = append(body.Res.Returnval, r)
	}
	return body
}

// ComplianceManager reports every associated entity as compliant: the lab
// has no real storage to disagree with a profile.
type ComplianceManager struct {
	types.ManagedObjectReference
	assoc *profileAssociations
}

// PbmFetchComplianceResult implements the SPBM call of the same name.
func (m *ComplianceManager) PbmFetchComplianceResult(req *pbmtypes.PbmFetchComplianceResult) soap.HasFault {
	body := &pbmmethods.PbmFetchComplianceResultBody{Res: &pbmtypes.PbmFetchComplianceResultResponse{}}
	for _, e := range req.Entities {
		r := pbmtypes.PbmComplianceResult{CheckTime: time.Now(), Entity: e, ComplianceStatus: string(pbmtypes.PbmComplianceStatusNotApplicable)}
		if ids := m.assoc.get(e.Key); len(ids) > 0 {
			r.Profile = &pbmtypes.PbmProfileId{UniqueId: ids[0]}
			r.ComplianceStatus = string(pbmtypes.PbmComplianceStatusCompliant)
		}
		body.Res.Returnval = append(body.Res.Returnval, r)
	}
	return body
}

var (
	pbmProfileManagerRef    = types.ManagedObjectReference{Type: "PbmProfileProfileManager", Value: "ProfileManager"}
	pbmComplianceManagerRef = types.ManagedObjectReference{Type: "PbmComplianceManager", Value: "complianceManager"}
)

// registerProfileAssociations replaces the SPBM profile manager of a started
// service with one that remembers associations, and adds a compliance
// manager. RegisterSDK merges objects into the existing /pbm registry.
func registerProfileAssociations(svc *simulator.Service) *profileAssociations {
	a := &profileAssociations{byKey: make(map[string][]string)}
	base := pbmsim.New().Get(pbmProfileManagerRef).(*pbmsim.ProfileManager)
	r := simulator.NewRegistry()
	r.Namespace = pbm.Namespace
	r.Path = pbm.Path
	r.Put(&ProfileManager{ProfileManager: base, assoc: a})
	r.Put(&ComplianceManager{ManagedObjectReference: pbmComplianceManagerRef, assoc: a})
	svc.RegisterSDK(r)
	return a
}
