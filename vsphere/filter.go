package vsphere

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/object"
	pbmtypes "github.com/vmware/govmomi/pbm/types"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

// FilterState is the outcome of InstallFilter.
type FilterState struct {
	FilterID  string
	ProfileID string
	// Installed is false when the filter was already there.
	Installed bool
}

// InstallFilter installs the I/O filter on a cluster and makes sure the CDP
// storage profile exists. Both steps are idempotent and tolerate another
// coordinator doing the same at the same time.
func (c *Client) InstallFilter(ctx context.Context, cluster string) (*FilterState, error) {
	op := "install I/O filter on cluster " + cluster
	if cluster == "" {
		return nil, fail(op, ErrInvalid, errors.New("empty cluster reference"))
	}
	cr := ref("ClusterComputeResource", cluster)
	var m mo.ClusterComputeResource
	if err := c.props(ctx, cr, []string{"name"}, &m); err != nil {
		return nil, wrap(op, err)
	}
	if c.vc.ServiceContent.IoFilterManager == nil {
		return nil, fail(op, ErrFault, errors.New("vCenter has no I/O filter manager"))
	}
	fm := *c.vc.ServiceContent.IoFilterManager
	st := &FilterState{}
	id, err := c.installedFilter(ctx, fm, cr)
	if err != nil {
		return nil, wrap(op, err)
	}
	if id == "" {
		res, err := methods.InstallIoFilter_Task(ctx, c.vc, &types.InstallIoFilter_Task{This: fm, VibUrl: c.cfg.FilterVIB, CompRes: cr})
		if err != nil {
			return nil, wrap(op, err)
		}
		result, err := c.waitTask(ctx, object.NewTask(c.vc, res.Returnval))
		switch {
		case err == nil:
			id, _ = result.(string)
			st.Installed = true
		case fault.Is(err, &types.AlreadyExists{}):
			// Another coordinator won the race; use its install.
		default:
			return nil, wrap(op, err)
		}
		if id == "" {
			if id, err = c.installedFilter(ctx, fm, cr); err != nil {
				return nil, wrap(op, err)
			}
		}
		if id == "" {
			return nil, fail(op, ErrTaskFailed, errors.New("filter not listed after install"))
		}
		c.log.Info("I/O filter installed", "cluster", m.Name, "filter", id)
	}
	st.FilterID = id
	if st.ProfileID, err = c.EnsureProfile(ctx); err != nil {
		return nil, wrap(op, err)
	}
	return st, nil
}

// installedFilter returns the ID of our filter on the cluster, or "".
func (c *Client) installedFilter(ctx context.Context, fm, cr types.ManagedObjectReference) (string, error) {
	q, err := methods.QueryIoFilterInfo(ctx, c.vc, &types.QueryIoFilterInfo{This: fm, CompRes: cr})
	if err != nil {
		return "", fmt.Errorf("query I/O filters: %w", err)
	}
	for _, f := range q.Returnval {
		if f.VibUrl == c.cfg.FilterVIB && f.OpType != string(types.IoFilterOperationUninstall) {
			return f.Id, nil
		}
	}
	return "", nil
}

// FilterInstalled reports whether our filter is installed on the cluster.
func (c *Client) FilterInstalled(ctx context.Context, cluster string) (bool, error) {
	if c.vc.ServiceContent.IoFilterManager == nil {
		return false, nil
	}
	id, err := c.installedFilter(ctx, *c.vc.ServiceContent.IoFilterManager, ref("ClusterComputeResource", cluster))
	if err != nil {
		return false, wrap("query I/O filter on cluster "+cluster, err)
	}
	return id != "", nil
}

// EnsureProfile returns the ID of the CDP storage profile, creating it if
// needed. If two coordinators created it at once, the one with the smallest
// ID is kept and the others deleted, so both end up with the same answer.
func (c *Client) EnsureProfile(ctx context.Context) (string, error) {
	op := "ensure storage profile " + c.cfg.ProfileName
	p, err := c.pbmClient(ctx)
	if err != nil {
		return "", wrap(op, err)
	}
	ids, err := c.profileIDs(ctx)
	if err != nil {
		return "", wrap(op, err)
	}
	if len(ids) == 0 {
		_, err := p.CreateProfile(ctx, pbmtypes.PbmCapabilityProfileCreateSpec{
			Name:        c.cfg.ProfileName,
			Description: "Disks replicated continuously by the CDP I/O filter",
			Category:    string(pbmtypes.PbmProfileCategoryEnumREQUIREMENT),
			ResourceType: pbmtypes.PbmProfileResourceType{
				ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE),
			},
			Constraints: &pbmtypes.PbmCapabilitySubProfileConstraints{
				SubProfiles: []pbmtypes.PbmCapabilitySubProfile{{
					Name: "Replication",
					Capability: []pbmtypes.PbmCapabilityInstance{{
						Id: pbmtypes.PbmCapabilityMetadataUniqueId{Namespace: "continuum.io.filter", Id: "cdp"},
						Constraint: []pbmtypes.PbmCapabilityConstraintInstance{{
							PropertyInstance: []pbmtypes.PbmCapabilityPropertyInstance{{Id: "enabled", Value: true}},
						}},
					}},
				}},
			},
		})
		if err != nil {
			return "", wrap(op, err)
		}
		if ids, err = c.profileIDs(ctx); err != nil {
			return "", wrap(op, err)
		}
	}
	if len(ids) == 0 {
		return "", fail(op, ErrFault, errors.New("profile not listed after create"))
	}
	if len(ids) > 1 {
		var extra []pbmtypes.PbmProfileId
		for _, id := range ids[1:] {
			extra = append(extra, pbmtypes.PbmProfileId{UniqueId: id})
		}
		if _, err := p.DeleteProfile(ctx, extra); err != nil {
			c.log.Warn("delete duplicate storage profiles", "err", err)
		}
	}
	return ids[0], nil
}

// profileIDs lists the IDs of profiles named like ours, sorted.
func (c *Client) profileIDs(ctx context.Context) ([]string, error) {
	p, err := c.pbmClient(ctx)
	if err != nil {
		return nil, err
	}
	rt := pbmtypes.PbmProfileResourceType{ResourceType: string(pbmtypes.PbmProfileResourceTypeEnumSTORAGE)}
	all, err := p.QueryProfile(ctx, rt, "")
	if err != nil {
		return nil, fmt.Errorf("list storage profiles: %w", err)
	}
	if len(all) == 0 {
		return nil, nil
	}
	profiles, err := p.RetrieveContent(ctx, all)
	if err != nil {
		return nil, fmt.Errorf("read storage profiles: %w", err)
	}
	var ids []string
	for _, pr := range profiles {
		if b := pr.GetPbmProfile(); b.Name == c.cfg.ProfileName {
			ids = append(ids, b.ProfileId.UniqueId)
		}
	}
	sort.Strings(ids)
	return ids, nil
}
