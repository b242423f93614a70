package appliance

import (
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
)

// schemaTypes names the Go types behind the schema names used in the route
// table.
var schemaTypes = map[string]reflect.Type{
	"Health":                reflect.TypeOf(client.Health{}),
	"NodeInfo":              reflect.TypeOf(client.NodeInfo{}),
	"ClusterStatus":         reflect.TypeOf(client.ClusterStatus{}),
	"Member":                reflect.TypeOf(client.Member{}),
	"JoinRequest":           reflect.TypeOf(client.JoinRequest{}),
	"JoinResponse":          reflect.TypeOf(client.JoinResponse{}),
	"ComponentCertRequest":  reflect.TypeOf(client.ComponentCertRequest{}),
	"ComponentCertResponse": reflect.TypeOf(client.ComponentCertResponse{}),
	"AddMemberRequest":      reflect.TypeOf(client.AddMemberRequest{}),
	"TransferRequest":       reflect.TypeOf(client.TransferRequest{}),
	"TransferResponse":      reflect.TypeOf(client.TransferResponse{}),
	"TokenRequest":          reflect.TypeOf(client.TokenRequest{}),
	"TokenResponse":         reflect.TypeOf(client.TokenResponse{}),
	"VCenterRequest":        reflect.TypeOf(client.VCenterRequest{}),
	"VCenter":               reflect.TypeOf(model.VCenter{}),
	"Cluster":               reflect.TypeOf(model.Cluster{}),
	"Host":                  reflect.TypeOf(model.Host{}),
	"Proxy":                 reflect.TypeOf(model.Proxy{}),
	"Policy":                reflect.TypeOf(model.Policy{}),
	"PolicyStatus":          reflect.TypeOf(client.PolicyStatus{}),
	"TrafficRule":           reflect.TypeOf(model.TrafficRule{}),
	"Error":                 reflect.TypeOf(client.ErrorBody{}),
	"OpenAPI":               reflect.TypeOf(map[string]any{}),
}

var (
	durationType = reflect.TypeOf(model.Duration(0))
	timeType     = reflect.TypeOf(time.Time{})
)

// schemaOf describes a Go type as an OpenAPI schema (inline, no refs
// except for the named top-level types).
func schemaOf(t reflect.Type) map[string]any {
	switch {
	case t == durationType:
		return map[string]any{"type": "string", "description": "Go duration, e.g. \"15s\""}
	case t == timeType:
		return map[string]any{"type": "string", "format": "date-time"}
	}
	switch t.Kind() {
	case reflect.Pointer:
		return schemaOf(t.Elem())
	case reflect.Bool:
		return map[string]any{"type": "boolean"}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return map[string]any{"type": "integer"}
	case reflect.Float32, reflect.Float64:
		return map[string]any{"type": "number"}
	case reflect.String:
		return map[string]any{"type": "string"}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return map[string]any{"type": "string", "format": "byte"}
		}
		return map[string]any{"type": "array", "items": schemaOf(t.Elem())}
	case reflect.Map:
		return map[string]any{"type": "object"}
	case reflect.Struct:
		props := map[string]any{}
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name := strings.Split(f.Tag.Get("json"), ",")[0]
			if name == "-" {
				continue
			}
			if name == "" {
				name = f.Name
			}
			props[name] = schemaOf(f.Type)
		}
		return map[string]any{"type": "object", "properties": props}
	}
	return map[string]any{}
}

func ref(name string) map[string]any {
	if strings.HasSuffix(name, "[]") {
		return map[string]any{"type": "array", "items": ref(strings.TrimSuffix(name, "[]"))}
	}
	return map[string]any{"$ref": "#/components/schemas/" + name}
}

// OpenAPI builds the OpenAPI 3 document from the route table the mux uses.
func (s *Server) OpenAPI() map[string]any {
	paths := map[string]any{}
	schemas := map[string]any{}
	for name, t := range schemaTypes {
		schemas[name] = schemaOf(t)
	}
	errResp := map[string]any{"description": "error", "content": map[string]any{"application/json": map[string]any{"schema": ref("Error")}}}
	for _, rt := range s.routes {
		item, _ := paths[rt.Path].(map[string]any)
		if item == nil {
			item = map[string]any{}
			paths[rt.Path] = item
		}
		op := map[string]any{"summary": rt.Summary, "operationId": operationID(rt)}
		var params []any
		for _, seg := range strings.Split(rt.Path, "/") {
			if strings.HasPrefix(seg, "{") && strings.HasSuffix(seg, "}") {
				params = append(params, map[string]any{"name": strings.Trim(seg, "{}"), "in": "path", "required": true,
					"description": "ID or name", "schema": map[string]any{"type": "string"}})
			}
		}
		for _, q := range rt.Query {
			params = append(params, map[string]any{"name": q, "in": "query", "required": false, "schema": map[string]any{"type": "boolean"}})
		}
		if rt.Place == leaderRead {
			params = append(params, map[string]any{"name": "stale", "in": "query", "required": false,
				"description": "answer from this node's local state instead of a linearizable read", "schema": map[string]any{"type": "boolean"}})
		}
		if params != nil {
			op["parameters"] = params
		}
		if rt.Request != "" {
			op["requestBody"] = map[string]any{"required": true, "content": map[string]any{"application/json": map[string]any{"schema": ref(rt.Request)}}}
		}
		ok := map[string]any{"description": "success"}
		if rt.Response != "" {
			ok["content"] = map[string]any{"application/json": map[string]any{"schema": ref(rt.Response)}}
		}
		code := "200"
		switch {
		case rt.Method == http.MethodDelete:
			code = "204"
		case rt.Method == http.MethodPost && rt.Response != "" && strings.Contains(rt.Summary, "Create") ||
			rt.Method == http.MethodPost && strings.HasPrefix(rt.Summary, "Register"):
			code = "201"
		}
		op["responses"] = map[string]any{code: ok, "default": errResp}
		if rt.Auth != authNone {
			op["security"] = []any{map[string]any{"bearer": []any{}}}
		}
		item[strings.ToLower(rt.Method)] = op
	}
	return map[string]any{
		"openapi": "3.0.3",
		"info":    map[string]any{"title": "Continuum coordinator API", "version": Version},
		"paths":   paths,
		"components": map[string]any{
			"schemas":         schemas,
			"securitySchemes": map[string]any{"bearer": map[string]any{"type": "http", "scheme": "bearer"}},
		},
	}
}

func operationID(rt route) string {
	var b strings.Builder
	b.WriteString(strings.ToLower(rt.Method))
	for _, seg := range strings.Split(rt.Path, "/") {
		seg = strings.Trim(seg, "{}")
		for _, part := range strings.FieldsFunc(seg, func(r rune) bool { return r == '-' || r == '.' || r == '_' }) {
			if part == "api" || part == "v1" {
				continue
			}
			b.WriteString(strings.ToUpper(part[:1]) + part[1:])
		}
	}
	return b.String()
}

func (s *Server) openAPI(*http.Request) (int, any, error) { return http.StatusOK, s.OpenAPI(), nil }
