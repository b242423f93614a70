package client

import (
	"bytes"
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
	"strings"
	"syscall"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// APIError is an error answered by the coordinator.
type APIError struct {
	Status  int
	Code    string
	Message string
	Field   string
}

func (e *APIError) Error() string {
	s := fmt.Sprintf("%s (%d): %s", e.Code, e.Status, e.Message)
	if e.Field != "" && !strings.Contains(e.Message, e.Field) {
		s += " [field " + e.Field + "]"
	}
	return s
}

// Unwrap maps the stable code back to the model sentinel, so callers can use
// errors.Is(err, model.ErrNotFound).
func (e *APIError) Unwrap() error {
	switch e.Code {
	case model.CodeInvalid:
		return model.ErrInvalid
	case model.CodeNotFound:
		return model.ErrNotFound
	case model.CodeConflict:
		return model.ErrConflict
	case model.CodeUnavailable:
		return model.ErrNoLeader
	case model.CodeFailedPrecond:
		return model.ErrPrecond
	}
	return nil
}

// Client calls the coordinator REST API. It is safe for concurrent use.
type Client struct {
	endpoints []string // base URLs, tried in turn when one is unreachable
	token     string
	hc        *http.Client

	// RetryFor bounds how long a call keeps retrying while the cluster has
	// no leader (503) or a node refuses connections. Zero: no retry.
	RetryFor time.Duration
	// Stale makes GETs answer from the contacted node's local state
	// instead of a linearizable read through the leader.
	Stale bool
}

// New builds a client. apiURL is a base URL ("https://127.0.0.1:8443") or a
// comma-separated list of them; caPEM is the cluster CA that must have signed
// the server certificate (nil: the system roots).
func New(apiURL, token string, caPEM []byte) (*Client, error) {
	var eps []string
	for _, u := range strings.Split(apiURL, ",") {
		u = strings.TrimRight(strings.TrimSpace(u), "/")
		if u == "" {
			continue
		}
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
			return nil, fmt.Errorf("API URL %q: want https://HOST:PORT", u)
		}
		eps = append(eps, u)
	}
	if len(eps) == 0 {
		return nil, errors.New("API URL required (--api or CONTINUUM_API)")
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("CA certificate: no PEM certificate found")
		}
		// Nodes are often reached by an address missing from their
		// certificate (NAT, loopback), so the chain is verified against the
		// cluster CA and the host name is not.
		tc.InsecureSkipVerify = true
		tc.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server presented no certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return fmt.Errorf("parse server certificate: %w", err)
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				if c, err := x509.ParseCertificate(r); err == nil {
					inter.AddCert(c)
				}
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter}); err != nil {
				return fmt.Errorf("server certificate not from the cluster CA: %w", err)
			}
			return nil
		}
	}
	tr := &http.Transport{
		TLSClientConfig:     tc,
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second}).DialContext,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
	}
	return &Client{
		endpoints: eps,
		token:     token,
		hc:        &http.Client{Transport: tr, Timeout: 15 * time.Second},
		RetryFor:  30 * time.Second,
	}, nil
}

// Endpoints returns the base URLs this client uses.
func (c *Client) Endpoints() []string { return append([]string(nil), c.endpoints...) }

// WithEndpoints returns a client sharing this one's token and transport
// that talks to the given base URLs.
func (c *Client) WithEndpoints(eps []string) *Client {
	n := *c
	n.endpoints = append([]string(nil), eps...)
	if len(n.endpoints) == 0 {
		n.endpoints = c.endpoints
	}
	return &n
}

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// retryable says whether err may clear up once a leader is elected or a node
// is back.
func retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Status == http.StatusServiceUnavailable || ae.Status == http.StatusBadGateway
	}
	// A node that died mid-request resets or closes the connection.
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Do sends one request and decodes the JSON answer into out (may be nil).
// It retries 503s and unreachable nodes with backoff until RetryFor passes,
// rotating through the endpoints.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", method, path, err)
		}
		body = b
	}
	if c.Stale && method == http.MethodGet {
		if strings.Contains(path, "?") {
			path += "&stale=true"
		} else {
			path += "?stale=true"
		}
	}
	deadline := time.Now().Add(c.RetryFor)
	backoff := 100 * time.Millisecond
	for attempt := 0; ; attempt++ {
		ep := c.endpoints[attempt%len(c.endpoints)]
		err := c.once(ctx, method, ep+path, body, out)
		if err == nil || !retryable(err) || time.Now().Add(backoff).After(deadline) {
			if err != nil {
				var ae *APIError
				if !errors.As(err, &ae) {
					err = fmt.Errorf("%s %s: %w", method, ep+path, err)
				}
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s %s: %w (last error: %v)", method, path, ctx.Err(), err)
		case <-time.After(backoff):
		}
		if backoff < 2*time.Second {
			backoff *= 2
		}
	}
}

func (c *Client) once(ctx context.Context, method, u string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("read response: %w", err)
	}
	if resp.StatusCode >= 300 {
		var eb ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
			return &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, Field: eb.Error.Field}
		}
		msg := strings.TrimSpace(string(data))
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return &APIError{Status: resp.StatusCode, Code: model.CodeInternal, Message: msg}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("decode response: %w", err)
	}
	return nil
}

func esc(s string) string { return url.PathEscape(s) }

// Health calls /healthz.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	return &h, c.Do(ctx, http.MethodGet, "/healthz", nil, &h)
}

// ClusterStatus returns members, leader, term and applied index.
func (c *Client) ClusterStatus(ctx context.Context) (*ClusterStatus, error) {
	var s ClusterStatus
	return &s, c.Do(ctx, http.MethodGet, "/api/v1/cluster", nil, &s)
}

// Node returns what the contacted node says about itself.
func (c *Client) Node(ctx context.Context) (*NodeInfo, error) {
	var n NodeInfo
	return &n, c.Do(ctx, http.MethodGet, "/api/v1/node", nil, &n)
}

// AddMember adds a voter (used by a joining node).
func (c *Client) AddMember(ctx context.Context, r AddMemberRequest) error {
	return c.Do(ctx, http.MethodPost, "/api/v1/cluster/members", r, nil)
}

// RemoveMember removes a node from the cluster.
func (c *Client) RemoveMember(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/cluster/members/"+esc(id), nil, nil)
}

// TransferLeadership moves leadership to node to (empty: any other node).
func (c *Client) TransferLeadership(ctx context.Context, to string) (*TransferResponse, error) {
	var r TransferResponse
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/cluster/transfer-leadership", TransferRequest{To: to}, &r)
}

// CreateToken creates a join or component token.
func (c *Client) CreateToken(ctx context.Context, role model.TokenRole) (*TokenResponse, error) {
	var r TokenResponse
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/tokens", TokenRequest{Role: role}, &r)
}

// ListVCenters lists registered vCenters.
func (c *Client) ListVCenters(ctx context.Context) ([]*model.VCenter, error) {
	var r []*model.VCenter
	return r, c.Do(ctx, http.MethodGet, "/api/v1/vcenters", nil, &r)
}

// GetVCenter gets a vCenter by ID or name.
func (c *Client) GetVCenter(ctx context.Context, id string) (*model.VCenter, error) {
	var r model.VCenter
	return &r, c.Do(ctx, http.MethodGet, "/api/v1/vcenters/"+esc(id), nil, &r)
}

// AddVCenter registers a vCenter.
func (c *Client) AddVCenter(ctx context.Context, v VCenterRequest) (*model.VCenter, error) {
	var r model.VCenter
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/vcenters", v, &r)
}

// DeleteVCenter removes a vCenter by ID or name.
func (c *Client) DeleteVCenter(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/vcenters/"+esc(id), nil, nil)
}

// ListClusters lists the vSphere clusters known to the coordinator.
func (c *Client) ListClusters(ctx context.Context) ([]*model.Cluster, error) {
	var r []*model.Cluster
	return r, c.Do(ctx, http.MethodGet, "/api/v1/clusters", nil, &r)
}

// ListHosts lists the ESXi hosts known to the coordinator.
func (c *Client) ListHosts(ctx context.Context) ([]*model.Host, error) {
	var r []*model.Host
	return r, c.Do(ctx, http.MethodGet, "/api/v1/hosts", nil, &r)
}

// ListProxies lists proxies.
func (c *Client) ListProxies(ctx context.Context) ([]*model.Proxy, error) {
	var r []*model.Proxy
	return r, c.Do(ctx, http.MethodGet, "/api/v1/proxies", nil, &r)
}

// GetProxy gets a proxy by ID or name.
func (c *Client) GetProxy(ctx context.Context, id string) (*model.Proxy, error) {
	var r model.Proxy
	return &r, c.Do(ctx, http.MethodGet, "/api/v1/proxies/"+esc(id), nil, &r)
}

// CreateProxy registers a proxy; the ID is assigned by the coordinator.
func (c *Client) CreateProxy(ctx context.Context, p *model.Proxy) (*model.Proxy, error) {
	var r model.Proxy
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/proxies", p, &r)
}

// UpdateProxy replaces a proxy's fields.
func (c *Client) UpdateProxy(ctx context.Context, id string, p *model.Proxy) (*model.Proxy, error) {
	var r model.Proxy
	return &r, c.Do(ctx, http.MethodPut, "/api/v1/proxies/"+esc(id), p, &r)
}

// DeleteProxy removes a proxy.
func (c *Client) DeleteProxy(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/proxies/"+esc(id), nil, nil)
}

// ListPolicies lists policies.
func (c *Client) ListPolicies(ctx context.Context) ([]*model.Policy, error) {
	var r []*model.Policy
	return r, c.Do(ctx, http.MethodGet, "/api/v1/policies", nil, &r)
}

// GetPolicy gets a policy by ID or name.
func (c *Client) GetPolicy(ctx context.Context, id string) (*model.Policy, error) {
	var r model.Policy
	return &r, c.Do(ctx, http.MethodGet, "/api/v1/policies/"+esc(id), nil, &r)
}

// CreatePolicy creates a policy.
func (c *Client) CreatePolicy(ctx context.Context, p *model.Policy) (*model.Policy, error) {
	var r model.Policy
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/policies", p, &r)
}

// UpdatePolicy replaces a policy's spec; p.Generation must be the current
// generation or the call fails with failed_precondition.
func (c *Client) UpdatePolicy(ctx context.Context, id string, p *model.Policy) (*model.Policy, error) {
	var r model.Policy
	return &r, c.Do(ctx, http.MethodPut, "/api/v1/policies/"+esc(id), p, &r)
}

// DeletePolicy deletes a policy.
func (c *Client) DeletePolicy(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/policies/"+esc(id), nil, nil)
}

// DeletePolicyWithReplicas deletes a policy and has the coordinator delete
// its replicas: the replica VMs, their journals on the target filters and
// their restore-point catalog. Refused while one of them is failed over.
func (c *Client) DeletePolicyWithReplicas(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/policies/"+esc(id)+"?delete_replicas=true", nil, nil)
}

// EnablePolicy enables a policy.
func (c *Client) EnablePolicy(ctx context.Context, id string) (*model.Policy, error) {
	var r model.Policy
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/policies/"+esc(id)+"/enable", nil, &r)
}

// DisablePolicy disables a policy.
func (c *Client) DisablePolicy(ctx context.Context, id string) (*model.Policy, error) {
	var r model.Policy
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/policies/"+esc(id)+"/disable", nil, &r)
}

// PolicyStatus returns a policy's per-VM tasks and overall status.
func (c *Client) PolicyStatus(ctx context.Context, id string) (*PolicyStatus, error) {
	var r PolicyStatus
	return &r, c.Do(ctx, http.MethodGet, "/api/v1/policies/"+esc(id)+"/status", nil, &r)
}

// ListTrafficRules lists traffic rules.
func (c *Client) ListTrafficRules(ctx context.Context) ([]*model.TrafficRule, error) {
	var r []*model.TrafficRule
	return r, c.Do(ctx, http.MethodGet, "/api/v1/traffic-rules", nil, &r)
}

// CreateTrafficRule creates a traffic rule.
func (c *Client) CreateTrafficRule(ctx context.Context, tr *model.TrafficRule) (*model.TrafficRule, error) {
	var r model.TrafficRule
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/traffic-rules", tr, &r)
}

// DeleteTrafficRule deletes a traffic rule by ID or name.
func (c *Client) DeleteTrafficRule(ctx context.Context, id string) error {
	return c.Do(ctx, http.MethodDelete, "/api/v1/traffic-rules/"+esc(id), nil, nil)
}

// OpenAPI returns the coordinator's OpenAPI 3 document.
func (c *Client) OpenAPI(ctx context.Context) (map[string]any, error) {
	var doc map[string]any
	return doc, c.Do(ctx, http.MethodGet, "/api/openapi.json", nil, &doc)
}

// Join asks for a node's join material; the client's token must be a join
// (or admin) token. A node that does not have the cluster CA yet joins
// with the pinned exchange of "continuum coordinator --join" instead.
func (c *Client) Join(ctx context.Context, r JoinRequest) (*JoinResponse, error) {
	var out JoinResponse
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/cluster/join", r, &out)
}

// ComponentCertificate obtains a certificate for a proxy or filter; the
// client's token may be a component, join or admin token.
func (c *Client) ComponentCertificate(ctx context.Context, r ComponentCertRequest) (*ComponentCertResponse, error) {
	var out ComponentCertResponse
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/components/certificate", r, &out)
}

// ProxyHeartbeat reports that the proxy (ID or name) is alive; the client's
// token may be a component token.
func (c *Client) ProxyHeartbeat(ctx context.Context, id string) (*model.Proxy, error) {
	var out model.Proxy
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/proxies/"+esc(id)+"/heartbeat", nil, &out)
}
