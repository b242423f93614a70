package vcsim

import (
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// IoFilterManager implements the vSphere IoFilterManager methods the
// simulator lacks. Filters are installed per cluster; a host belongs to the
// filter's hosts because it is in the cluster, so hosts added later have it.
type IoFilterManager struct {
	mo.IoFilterManager

	mu        sync.Mutex
	installed map[types.ManagedObjectReference]map[string]types.ClusterIoFilterInfo
}

func registerIoFilterManager(r *simulator.Registry) *IoFilterManager {
	m := &IoFilterManager{installed: make(map[types.ManagedObjectReference]map[string]types.ClusterIoFilterInfo)}
	m.Self = types.ManagedObjectReference{Type: "IoFilterManager", Value: "IoFilterManager"}
	r.Put(m)
	return m
}

// FilterID derives the filter identifier from the VIB file name, the way
// ESXi names an installed VIB: vendor_bootbank_name_version.
func FilterID(vibURL string) string {
	base := strings.TrimSuffix(path.Base(vibURL), path.Ext(vibURL))
	return "CONTINUUM_bootbank_" + base
}

func clusterOf(ctx *simulator.Context, ref types.ManagedObjectReference) (*simulator.ClusterComputeResource, types.BaseMethodFault) {
	if ref.Type != "ClusterComputeResource" {
		return nil, &types.InvalidArgument{InvalidProperty: "compRes"}
	}
	c, ok := ctx.Map.Get(ref).(*simulator.ClusterComputeResource)
	if !ok {
		return nil, &types.ManagedObjectNotFound{Obj: ref}
	}
	return c, nil
}

// InstallIoFilterTask implements InstallIoFilter_Task.
func (m *IoFilterManager) InstallIoFilterTask(ctx *simulator.Context, req *types.InstallIoFilter_Task) soap.HasFault {
	task := simulator.CreateTask(m, "installIoFilter", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if req.VibUrl == "" {
			return nil, &types.InvalidArgument{InvalidProperty: "vibUrl"}
		}
		if _, f := clusterOf(ctx, req.CompRes); f != nil {
			return nil, f
		}
		id := FilterID(req.VibUrl)
		m.mu.Lock()
		defer m.mu.Unlock()
		filters := m.installed[req.CompRes]
		if filters == nil {
			filters = make(map[string]types.ClusterIoFilterInfo)
			m.installed[req.CompRes] = filters
		}
		if _, ok := filters[id]; ok {
			return nil, &types.AlreadyExists{Name: id}
		}
		filters[id] = types.ClusterIoFilterInfo{
			IoFilterInfo: types.IoFilterInfo{
				Id:      id,
				Name:    strings.TrimPrefix(id, "CONTINUUM_bootbank_"),
				Vendor:  "CONTINUUM",
				Version: "1.0.0",
				Type:    string(types.IoFilterTypeReplication),
				Summary: "continuous data protection",
			},
			OpType: string(types.IoFilterOperationInstall),
			VibUrl: req.VibUrl,
		}
		return id, nil
	})
	return &methods.InstallIoFilter_TaskBody{Res: &types.InstallIoFilter_TaskResponse{Returnval: task.Run(ctx)}}
}

// UninstallIoFilterTask implements UninstallIoFilter_Task.
func (m *IoFilterManager) UninstallIoFilterTask(ctx *simulator.Context, req *types.UninstallIoFilter_Task) soap.HasFault {
	task := simulator.CreateTask(m, "uninstallIoFilter", func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		if _, f := clusterOf(ctx, req.CompRes); f != nil {
			return nil, f
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.installed[req.CompRes][req.FilterId]; !ok {
			return nil, &types.NotFound{}
		}
		delete(m.installed[req.CompRes], req.FilterId)
		return nil, nil
	})
	return &methods.UninstallIoFilter_TaskBody{Res: &types.UninstallIoFilter_TaskResponse{Returnval: task.Run(ctx)}}
}

// QueryIoFilterInfo implements QueryIoFilterInfo.
func (m *IoFilterManager) QueryIoFilterInfo(ctx *simulator.Context, req *types.QueryIoFilterInfo) soap.HasFault {
	body := &methods.QueryIoFilterInfoBody{}
	if _, f := clusterOf(ctx, req.CompRes); f != nil {
		body.Fault_ = simulator.Fault("", f)
		return body
	}
	body.Res = &types.QueryIoFilterInfoResponse{Returnval: m.list(req.CompRes)}
	return body
}

// QueryIoFilterIssues implements QueryIoFilterIssues: the lab's installs
// never fail on a host, so every host of the cluster reports no issue.
func (m *IoFilterManager) QueryIoFilterIssues(ctx *simulator.Context, req *types.QueryIoFilterIssues) soap.HasFault {
	body := &methods.QueryIoFilterIssuesBody{}
	if _, f := clusterOf(ctx, req.CompRes); f != nil {
		body.Fault_ = simulator.Fault("", f)
		return body
	}
	m.mu.Lock()
	_, ok := m.installed[req.CompRes][req.FilterId]
	m.mu.Unlock()
	if !ok {
		body.Fault_ = simulator.Fault("", &types.NotFound{})
		return body
	}
	body.Res = &types.QueryIoFilterIssuesResponse{Returnval: types.IoFilterQueryIssueResult{OpType: string(types.IoFilterOperationInstall)}}
	return body
}

func (m *IoFilterManager) list(cluster types.ManagedObjectReference) []types.ClusterIoFilterInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []types.ClusterIoFilterInfo
	for _, f := range m.installed[cluster] {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Id < out[j].Id })
	return out
}

// Installed returns the filter IDs installed on a cluster (by MoRef value).
func (m *IoFilterManager) Installed(cluster string) []string {
	var ids []string
	for _, f := range m.list(types.ManagedObjectReference{Type: "ClusterComputeResource", Value: cluster}) {
		ids = append(ids, f.Id)
	}
	return ids
}
