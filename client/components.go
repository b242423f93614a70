package client

import (
	"context"
	"net/http"

	"github.com/continuum-cdp/continuum/internal/model"
)

// ComponentHeartbeat sends a filter's or proxy's heartbeat (its addresses
// and the status of its VMs) and returns the configuration it must run; the
// client's token may be a component token.
func (c *Client) ComponentHeartbeat(ctx context.Context, rep model.ComponentReport) (*model.ComponentConfig, error) {
	var out model.ComponentConfig
	return &out, c.Do(ctx, http.MethodPost, "/api/v1/components/heartbeat", rep, &out)
}
