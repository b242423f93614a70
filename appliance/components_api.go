package appliance

import (
	"net/http"
	"reflect"

	"github.com/continuum-cdp/continuum/internal/model"
)

func init() {
	schemaTypes["ComponentReport"] = reflect.TypeOf(model.ComponentReport{})
	schemaTypes["ComponentConfig"] = reflect.TypeOf(model.ComponentConfig{})
}

// componentHeartbeat records a filter's or proxy's heartbeat and answers
// with the configuration that component must run.
func (s *Server) componentHeartbeat(r *http.Request) (int, any, error) {
	var rep model.ComponentReport
	if err := decodeBody(r, &rep); err != nil {
		return 0, nil, err
	}
	return 0, nil, errUnavailable("component heartbeats are not served yet")
}
