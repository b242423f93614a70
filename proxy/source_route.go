package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"reflect"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// SourceRoute is one VM's data path through a source proxy, as the
// coordinator configures it.
type SourceRoute struct {
	TaskID string
	// Target is the data address (host:port) of the VM's target proxy.
	Target string
	// Key is the task's AES-256 key; nil sends the VM's points in clear.
	Key []byte
	// Rules choose encryption and throttle by the addresses of the
	// connection to the target; first match wins. No match encrypts with
	// Key (when there is one) and does not throttle.
	Rules []model.TrafficRule
	// RPO is the interval between the VM's cuts; 0 keeps the proxy's.
	RPO time.Duration
}

// sourceRoute is a checked SourceRoute.
type sourceRoute struct {
	SourceRoute
	sealer *wire.Sealer
	rules  []*sourceRule
}

// same reports whether a session opened under r is still right under o:
// the target, key and rules are equal (the RPO does not touch sessions).
func (r *sourceRoute) same(o *sourceRoute) bool {
	if r == nil || o == nil {
		return r == o
	}
	return r.Target == o.Target && bytes.Equal(r.Key, o.Key) && reflect.DeepEqual(r.Rules, o.Rules)
}

func compileRoute(vm string, r SourceRoute) (*sourceRoute, error) {
	if vm == "" {
		return nil, errors.New("a route without a VM name")
	}
	if r.Target == "" {
		return nil, fmt.Errorf("vm %s: no target proxy address", vm)
	}
	if _, _, err := net.SplitHostPort(r.Target); err != nil {
		return nil, fmt.Errorf("vm %s: target proxy address %q: %w", vm, r.Target, err)
	}
	if r.RPO < 0 {
		return nil, fmt.Errorf("vm %s: negative RPO %s", vm, r.RPO)
	}
	out := &sourceRoute{SourceRoute: r}
	var err error
	if out.Key, out.Rules, out.sealer, out.rules, err = routeSecurity(vm, r.Key, r.Rules); err != nil {
		return nil, err
	}
	return out, nil
}

// bucketKey names a throttling rule so that every VM on the same rule
// shares one bucket: a rule limits the traffic between two address ranges,
// not each VM's.
func bucketKey(r model.TrafficRule) string {
	return fmt.Sprintf("%s\x00%s\x00%s\x00%s\x00%d", r.ID, r.Name, r.SourceCIDR, r.TargetCIDR, r.ThrottleBytesPerSec)
}

// Configure replaces the per-VM routes. A VM whose target, key or rules
// change reconnects to its target proxy, which answers with the target
// filter's resume position, so nothing is lost or sent twice. A VM that
// is no longer listed (and has no static target) is dropped at once with
// whatever it buffers: the filter frees a write only when this proxy
// forwards the target's durable acknowledgement, so the filter still holds
// (or tracks in CBT) everything dropped here and resends it to the VM's
// next source proxy. A bad route is an error and changes nothing.
func (p *SourceProxy) Configure(routes map[string]SourceRoute) error {
	if p.cfg.DialAddr == nil {
		return errors.New("source proxy: routes need an address dialer (DialAddr)")
	}
	compiled := make(map[string]*sourceRoute, len(routes))
	for vm, r := range routes {
		cr, err := compileRoute(vm, r)
		if err != nil {
			return fmt.Errorf("source proxy: configure: %w", err)
		}
		compiled[vm] = cr
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("source proxy closed")
	}
	for vm, cr := range compiled {
		// an unchanged key keeps its sealer: each new sealer draws a random
		// nonce prefix, and fewer draws keep nonce collisions further away
		if old := p.routes[vm]; old != nil && old.sealer != nil && bytes.Equal(old.Key, cr.Key) {
			cr.sealer = old.sealer
		}
	}
	// rules of the same name and limits keep their bucket (and the bytes
	// it already let through) across configurations
	buckets := map[string]*sourceBucket{}
	for _, cr := range compiled {
		for _, sr := range cr.rules {
			if sr.bucket == nil {
				continue
			}
			k := bucketKey(sr.rule)
			if b, ok := buckets[k]; ok {
				sr.bucket = b
			} else if b, ok := p.ruleBuckets[k]; ok {
				sr.bucket = b
				buckets[k] = b
			} else {
				buckets[k] = sr.bucket
			}
		}
	}
	p.ruleBuckets = buckets
	p.routes = compiled
	for name, v := range p.vms {
		nr := compiled[name]
		if nr == nil && p.cfg.DialTarget == nil {
			v.log.Info("vm removed from the configuration, dropping it")
			v.dropLocked()
			continue
		}
		if !v.route.same(nr) {
			v.routeGen++
			if v.target != nil {
				// the session loop dials again with the new route
				v.target.Close()
			}
			v.log.Info("vm route changed", "target", routeTarget(nr))
		}
		oldRPO := v.rpoLocked()
		v.route = nr
		if v.rpoLocked() != oldRPO {
			select {
			case v.rpoChanged <- struct{}{}:
			default:
			}
		}
	}
	p.cond.Broadcast()
	return nil
}

func routeTarget(r *sourceRoute) string {
	if r == nil {
		return "static"
	}
	return r.Target
}

// rpoLocked is the VM's cut interval. Called with mu held.
func (v *sourceVM) rpoLocked() time.Duration {
	if v.route != nil && v.route.RPO > 0 {
		return v.route.RPO
	}
	return v.p.cfg.RPO
}

// policyForRoute is policyFor with a route's rules and key.
func policyForRoute(r *sourceRoute, nc net.Conn) trafficPolicy {
	if sr := matchRule(r.rules, addrOf(nc.LocalAddr()), addrOf(nc.RemoteAddr())); sr != nil {
		pol := trafficPolicy{rule: sr.rule.Name, bucket: sr.bucket}
		if sr.rule.Encrypt {
			pol.sealer = r.sealer
		}
		return pol
	}
	return trafficPolicy{sealer: r.sealer}
}

// dropLocked forgets the VM: its sessions close, its goroutines end and
// the memory and spill space it held are freed. Called with mu held.
func (v *sourceVM) dropLocked() {
	p := v.p
	if v.dropped {
		return
	}
	v.dropped = true
	if p.vms[v.name] == v {
		delete(p.vms, v.name)
	}
	if v.filter != nil {
		v.filter.Close()
		v.filter = nil
	}
	if v.target != nil {
		v.target.Close()
	}
	p.memBytes -= v.pendingBytes + v.inflight
	v.pendingBytes, v.inflight = 0, 0
	for _, sp := range v.points {
		p.releaseLocked(sp)
	}
	v.points, v.sendIdx = nil, 0
	v.maps = map[int32]*sourceExtentMap{}
	v.cancel()
	p.cond.Broadcast()
}

// routeSecurity copies a route's key and traffic rules (the caller's
// slices stay the caller's) and builds its sealer and compiled rules; both
// sides of the proxy check a route the same way.
func routeSecurity(vm string, key []byte, rules []model.TrafficRule) ([]byte, []model.TrafficRule, *wire.Sealer, []*sourceRule, error) {
	var sealer *wire.Sealer
	if len(key) > 0 {
		s, err := wire.NewSealer(key)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("vm %s: %w", vm, err)
		}
		sealer = s
	}
	compiled, err := compileRules(rules, sealer)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("vm %s: %w", vm, err)
	}
	return bytes.Clone(key), append([]model.TrafficRule(nil), rules...), sealer, compiled, nil
}
