package vsphere

import (
	"context"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/property"
	"github.com/vmware/govmomi/vim25/types"
)

// collectorPoolSize bounds the property collectors one Client uses for
// single-object reads.
const collectorPoolSize = 8

// props reads properties of one object through a pooled property
// collector. With one collector per session, every read of the session
// queues behind a read of an object that a running task holds (the
// simulator locks the collector for the whole call); a few collectors let
// parallel callers pass each other.
func (c *Client) props(ctx context.Context, obj types.ManagedObjectReference, ps []string, dst any) error {
	pc, err := c.takeCollector(ctx)
	if err != nil {
		return err
	}
	err = pc.RetrieveOne(ctx, obj, ps, dst)
	var nf *types.ManagedObjectNotFound
	if err != nil && lostCollector(err, &nf) && nf.Obj == pc.Reference() {
		// The collector went with a lost session; use a fresh one.
		if pc, err = property.DefaultCollector(c.vc).Create(ctx); err != nil {
			c.pcMu.Lock()
			c.pcCount--
			c.pcMu.Unlock()
			return err
		}
		err = pc.RetrieveOne(ctx, obj, ps, dst)
	}
	c.pcs <- pc
	return err
}

func lostCollector(err error, nf **types.ManagedObjectNotFound) bool {
	_, ok := fault.As(err, nf)
	return ok && *nf != nil
}

func (c *Client) takeCollector(ctx context.Context) (*property.Collector, error) {
	select {
	case pc := <-c.pcs:
		return pc, nil
	default:
	}
	c.pcMu.Lock()
	if c.pcCount < collectorPoolSize {
		c.pcCount++
		c.pcMu.Unlock()
		pc, err := property.DefaultCollector(c.vc).Create(ctx)
		if err != nil {
			c.pcMu.Lock()
			c.pcCount--
			c.pcMu.Unlock()
			return nil, err
		}
		return pc, nil
	}
	c.pcMu.Unlock()
	select {
	case pc := <-c.pcs:
		return pc, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
