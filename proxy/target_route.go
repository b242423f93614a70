package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// TargetRoute is one VM's delivery through a target proxy, as the
// coordinator configures it.
type TargetRoute struct {
	TaskID string
	// Filter is the data address of the target filter of the VM's replica.
	Filter string
	// Key is the task's AES-256 key; nil accepts only clear points.
	Key []byte
	// Rules are the task's traffic rules. A source encrypts unless a
	// matching rule says not to, so a clear point is accepted only when a
	// rule matching the connection (the source's address as source, ours
	// as target) lets that path go clear.
	Rules []model.TrafficRule
}

type targetRoute struct {
	TargetRoute
	sealer *wire.Sealer
	rules  []*sourceRule
}

func (r *targetRoute) same(o *targetRoute) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.Filter == o.Filter && bytes.Equal(r.Key, o.Key) && reflect.DeepEqual(r.Rules, o.Rules)
}

// sealerFor is the key that the points of a source connection must be
// sealed with, nil when they must arrive in clear.
func (r *targetRoute) sealerFor(nc net.Conn) *wire.Sealer {
	// the source dialed us: its local address is our remote one
	if sr := matchRule(r.rules, addrOf(nc.RemoteAddr()), addrOf(nc.LocalAddr())); sr != nil && !sr.rule.Encrypt {
		return nil
	}
	return r.sealer
}

func compileTargetRoute(vm string, r TargetRoute) (*targetRoute, error) {
	if vm == "" {
		return nil, errors.New("a route without a VM name")
	}
	if r.Filter == "" {
		return nil, fmt.Errorf("vm %s: no target filter address", vm)
	}
	if _, _, err := net.SplitHostPort(r.Filter); err != nil {
		return nil, fmt.Errorf("vm %s: target filter address %q: %w", vm, r.Filter, err)
	}
	out := &targetRoute{TargetRoute: r}
	var err error
	if out.Key, out.Rules, out.sealer, out.rules, err = routeSecurity(vm, r.Key, r.Rules); err != nil {
		return nil, err
	}
	return out, nil
}

// Configure replaces the VMs of a managed target proxy. The sessions of a
// VM whose target filter, key or rules changed, or that is no longer
// listed, are closed: the source proxy reconnects and the new session
// learns the resume position from the target filter again. A bad route is
// an error and changes nothing.
func (t *Target) Configure(routes map[string]TargetRoute) error {
	if !t.cfg.Managed {
		return errors.New("target proxy: not managed, its VMs are static")
	}
	compiled := make(map[string]*targetRoute, len(routes))
	for vm, r := range routes {
		cr, err := compileTargetRoute(vm, r)
		if err != nil {
			return fmt.Errorf("target proxy: configure: %w", err)
		}
		compiled[vm] = cr
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for c, e := range t.sessions {
		if nr := compiled[e.vm]; !e.route.same(nr) {
			t.log.Info("vm route changed, closing its session", "vm", e.vm, "removed", nr == nil)
			c.Close()
			delete(t.sessions, c)
		} else if nr != nil {
			e.route = nr
			t.sessions[c] = e
		}
	}
	t.routes = compiled
	return nil
}

// Routes lists the VMs a managed target proxy serves.
func (t *Target) Routes() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(t.routes))
	for vm := range t.routes {
		out = append(out, vm)
	}
	return out
}
