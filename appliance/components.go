package appliance

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/continuum-cdp/continuum/appliance/controllers"
	"github.com/continuum-cdp/continuum/filter/target"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/internal/pki"
)

// FilterAdmin reaches the filters' admin APIs over HTTPS as this
// coordinator node: its node certificate is the client certificate (a
// managed filter accepts cluster certificates that are not component
// certificates) and the cluster CA verifies the filter.
type FilterAdmin struct {
	hc *http.Client
}

// NewFilterAdmin builds the HTTPS client of the filters' admin APIs.
func NewFilterAdmin(ca *x509.Certificate, node tls.Certificate) *FilterAdmin {
	tr := &http.Transport{
		TLSClientConfig:     pki.ClientTLS(ca, &node),
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	// No overall timeout: an image export streams for as long as the disk
	// takes; callers bound the short calls with their context.
	return &FilterAdmin{hc: &http.Client{Transport: tr}}
}

// Close drops idle connections.
func (f *FilterAdmin) Close() { f.hc.CloseIdleConnections() }

// Client returns the admin client of the filter at addr (host:port).
func (f *FilterAdmin) Client(addr string) (*target.Client, error) {
	return target.NewClient("https://"+addr, f.hc)
}

// Image opens the raw image of a disk of vm at a point on the filter at
// addr; the caller closes the body. size is -1 when the filter did not say.
func (f *FilterAdmin) Image(ctx context.Context, addr, vm string, point uint64, disk int32) (body io.ReadCloser, size int64, err error) {
	u := fmt.Sprintf("https://%s/v1/vms/%s/points/%d/disks/%d/image", addr, url.PathEscape(vm), point, disk)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("read image of %s disk %d at point %d: %w", vm, disk, point, err)
	}
	resp, err := f.hc.Do(req)
	if err != nil {
		return nil, 0, fmt.Errorf("read image of %s disk %d at point %d from filter %s: %w", vm, disk, point, addr, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, remoteError(resp, fmt.Sprintf("read image of %s disk %d at point %d from filter %s", vm, disk, point, addr))
	}
	return resp.Body, resp.ContentLength, nil
}

// remoteError turns a filter's error answer into an API error with the
// same status and code.
func remoteError(resp *http.Response, doing string) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	re := &target.RemoteError{Status: resp.StatusCode, Code: model.CodeInternal, Message: string(b)}
	var body target.APIError
	if err := json.Unmarshal(b, &body); err == nil && body.Error.Message != "" {
		re.Code, re.Message = body.Error.Code, body.Error.Message
	}
	return fromRemote(re, doing)
}

// fromRemote keeps a filter's 4xx answer (a VM or point it does not know)
// as such; anything else is a failure of the filter.
func fromRemote(err error, doing string) error {
	var re *target.RemoteError
	if errors.As(err, &re) && re.Status >= 400 && re.Status < 500 && re.Code != "" {
		return &apiError{status: re.Status, code: re.Code, msg: doing + ": " + re.Message}
	}
	return &apiError{status: http.StatusBadGateway, code: model.CodeUnavailable, msg: fmt.Sprintf("%s: %v", doing, err)}
}

// Components is the coordinator's side of the data-path components. The
// components pull their configuration with their heartbeats, so
// Configure checks that the configuration can be served: every component
// of the task's path is alive. CreateLongTerm asks the target host's
// filter for a long-term point.
type Components struct {
	Store controllers.Store
	// Filters reaches the filters' admin APIs.
	Filters *FilterAdmin
	// HeartbeatTimeout: a component not heard from for longer is dead;
	// the reconciler's value, so both agree on what is alive.
	HeartbeatTimeout time.Duration
	// Now is the clock; nil: time.Now.
	Now func() time.Time
}

var _ controllers.Components = (*Components)(nil)

func (c *Components) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

func (c *Components) timeout() time.Duration {
	if c.HeartbeatTimeout > 0 {
		return c.HeartbeatTimeout
	}
	return 15 * time.Second
}

// silence describes how long ago a component last reported.
func silence(last, now time.Time) string {
	if last.IsZero() {
		return "has never reported"
	}
	return fmt.Sprintf("has not reported for %s", now.Sub(last).Round(time.Second))
}

// checkHost says why the filter of host id cannot serve, or "".
func checkHost(st *model.State, id, side string, now time.Time, timeout time.Duration, needData bool) string {
	if id == "" {
		return fmt.Sprintf("the %s host is not known yet", side)
	}
	h, ok := st.Hosts[id]
	if !ok {
		return fmt.Sprintf("the filter of %s host %s has never reported", side, id)
	}
	name := h.Name
	if name == "" {
		name = h.MoRef
	}
	if !controllers.HostAlive(h, now, timeout) {
		return fmt.Sprintf("the filter of %s host %s (%s) %s", side, name, id, silence(h.LastHeartbeat, now))
	}
	if needData && h.FilterAddr == "" {
		return fmt.Sprintf("the filter of %s host %s (%s) has not reported its data address", side, name, id)
	}
	return ""
}

// checkProxy says why proxy id cannot serve as side, or "".
func checkProxy(st *model.State, id, side string, now time.Time, timeout time.Duration) string {
	if id == "" {
		return fmt.Sprintf("no %s proxy is selected", side)
	}
	px, ok := st.Proxies[id]
	if !ok {
		return fmt.Sprintf("%s proxy %s is no longer registered", side, id)
	}
	if !controllers.Alive(px, now, timeout) {
		return fmt.Sprintf("%s proxy %s %s", side, px.Name, silence(px.LastHeartbeat, now))
	}
	return ""
}

// Configure checks that the source and target hosts' filters and both
// proxies heartbeated within the liveness window: they then pick the
// task's configuration up with their next heartbeat. The error names every
// component that is missing.
func (c *Components) Configure(ctx context.Context, dp controllers.DataPath) error {
	now, timeout := c.now(), c.timeout()
	var problems []string
	c.Store.Read(func(st *model.State) {
		for _, p := range []string{
			checkHost(st, dp.Task.SourceHost, "source", now, timeout, false),
			checkHost(st, dp.Task.TargetHost, "target", now, timeout, true),
			checkProxy(st, dp.SourceProxy.ID, "source", now, timeout),
			checkProxy(st, dp.TargetProxy.ID, "target", now, timeout),
		} {
			if p != "" {
				problems = append(problems, p)
			}
		}
	})
	if len(problems) == 0 {
		return nil
	}
	errs := make([]error, len(problems))
	for i, p := range problems {
		errs[i] = errors.New(p)
	}
	return fmt.Errorf("data path of %s cannot be served: %w", dp.Task.VMName, errors.Join(errs...))
}

// targetAdmin returns the admin address of the filter that keeps the
// task's journal.
func targetAdmin(st *model.State, t *model.VMTask) (string, error) {
	if t.TargetHost == "" {
		return "", model.Precond("vm", "the replica of %s is not placed on a host yet", t.VMName)
	}
	h, ok := st.Hosts[t.TargetHost]
	if !ok || h.FilterAdmin == "" {
		return "", model.Precond("vm", "the filter of target host %s has not reported its admin address", t.TargetHost)
	}
	return h.FilterAdmin, nil
}

// CreateLongTerm asks the target host's filter to form a long-term point
// of the task's VM now.
func (c *Components) CreateLongTerm(ctx context.Context, task model.VMTask) (time.Time, error) {
	if c.Filters == nil {
		return time.Time{}, errors.New("create long-term point: no filter admin client")
	}
	var addr string
	var err error
	c.Store.Read(func(st *model.State) { addr, err = targetAdmin(st, &task) })
	if err != nil {
		return time.Time{}, fmt.Errorf("create long-term point of %s: %w", task.VMName, err)
	}
	cl, err := c.Filters.Client(addr)
	if err != nil {
		return time.Time{}, fmt.Errorf("create long-term point of %s: %w", task.VMName, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	p, err := cl.LongTerm(ctx, task.VMName)
	var re *target.RemoteError
	if errors.As(err, &re) && re.Status == http.StatusPreconditionFailed {
		// Nothing was written since the newest long-term point: that
		// point already holds the VM as it is now.
		if at, ok := newestLongTerm(ctx, cl, task.VMName); ok {
			return at, nil
		}
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("create long-term point of %s on filter %s: %w", task.VMName, addr, err)
	}
	return p.Time, nil
}

// PurgeJournal deletes the journal of vm on the filter of targetHost (a
// host ID). A journal already gone, or a host the state no longer has (its
// filter, and the journal with it, went with the host), is not an error;
// a filter that still replicates the VM refuses, and the caller retries.
func (c *Components) PurgeJournal(ctx context.Context, targetHost, vm string) error {
	if c.Filters == nil {
		return errors.New("purge journal: no filter admin client")
	}
	var addr string
	known := false
	c.Store.Read(func(st *model.State) {
		if h, ok := st.Hosts[targetHost]; ok {
			known, addr = true, h.FilterAdmin
		}
	})
	if !known {
		return nil
	}
	if addr == "" {
		return model.Precond("target_host", "the filter of host %s has not reported its admin address", targetHost)
	}
	cl, err := c.Filters.Client(addr)
	if err != nil {
		return fmt.Errorf("purge journal of %s: %w", vm, err)
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	err = cl.RemoveVM(ctx, vm)
	var re *target.RemoteError
	if errors.As(err, &re) && re.Status == http.StatusNotFound {
		return nil
	}
	if err != nil {
		return fmt.Errorf("purge journal of %s on filter %s: %w", vm, addr, err)
	}
	return nil
}

// newestLongTerm returns the time of the newest long-term point of vm.
func newestLongTerm(ctx context.Context, cl *target.Client, vm string) (time.Time, bool) {
	pts, err := cl.Points(ctx, vm)
	if err != nil {
		return time.Time{}, false
	}
	for i := len(pts) - 1; i >= 0; i-- {
		if pts[i].Kind == model.PointLongTerm {
			return pts[i].Time, true
		}
	}
	return time.Time{}, false
}

// pointID parses a restore-point ID of a path.
func pointID(s string) (uint64, error) {
	id, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, model.Invalid("point", "not a restore point ID: %q", s)
	}
	return id, nil
}
