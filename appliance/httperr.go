package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"sort"
	"strings"

	"github.com/continuum-cdp/continuum/client"
	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
)

// apiError is an error with an HTTP status and stable code decided by the
// handler (auth failures, oversized bodies) rather than derived from model
// sentinels.
type apiError struct {
	status int
	code   string
	field  string
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errUnauthorized(msg string) error {
	return &apiError{status: http.StatusUnauthorized, code: model.CodeUnauthorized, msg: msg}
}

func errForbidden(msg string) error {
	return &apiError{status: http.StatusForbidden, code: model.CodeForbidden, msg: msg}
}

func errUnavailable(msg string) error {
	return &apiError{status: http.StatusServiceUnavailable, code: model.CodeUnavailable, msg: msg}
}

// statusOf maps an error to the HTTP status, the stable code and the field.
func statusOf(err error) (int, string, string) {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.status, ae.code, ae.field
	}
	var nl *raftstore.NotLeaderError
	if errors.As(err, &nl) {
		return http.StatusServiceUnavailable, model.CodeUnavailable, ""
	}
	var mb *http.MaxBytesError
	if errors.As(err, &mb) {
		return http.StatusRequestEntityTooLarge, model.CodeTooLarge, ""
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Raft did not commit in time: most often no quorum.
		return http.StatusServiceUnavailable, model.CodeUnavailable, ""
	}
	code := model.ErrorCode(err)
	field := model.ErrorField(err)
	switch code {
	case model.CodeInvalid:
		return http.StatusBadRequest, code, field
	case model.CodeNotFound:
		return http.StatusNotFound, code, field
	case model.CodeConflict:
		return http.StatusConflict, code, field
	case model.CodeFailedPrecond:
		return http.StatusPreconditionFailed, code, field
	case model.CodeUnavailable:
		return http.StatusServiceUnavailable, code, field
	}
	return http.StatusInternalServerError, model.CodeInternal, field
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if v == nil {
		return
	}
	enc := json.NewEncoder(w)
	if c, ok := v.(compact); ok {
		v = c.v
	} else {
		enc.SetIndent("", "  ")
	}
	_ = enc.Encode(v)
}

// compact asks writeJSON for JSON without indentation: the components'
// heartbeat answers are large, frequent and read by no person.
type compact struct{ v any }

func writeError(w http.ResponseWriter, err error) int {
	status, code, field := statusOf(err)
	msg := err.Error()
	if status == http.StatusRequestEntityTooLarge {
		msg = fmt.Sprintf("request body larger than %d bytes", maxBody)
	}
	writeJSON(w, status, client.ErrorBody{Error: client.ErrorDetail{Code: code, Message: msg, Field: field}})
	return status
}

// decodeBody reads one JSON object into v, refusing unknown fields, trailing
// data and bodies over maxBody. A failure names the offending field when it
// can be told.
func decodeBody(r *http.Request, v any) error {
	data, err := io.ReadAll(r.Body)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			return err
		}
		return fmt.Errorf("read request body: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return model.Invalid("body", "empty body: a JSON object is required")
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	err = dec.Decode(v)
	if err == nil {
		if dec.More() {
			return model.Invalid("body", "trailing data after the JSON object")
		}
		return nil
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return model.Invalid("body", "malformed JSON at byte %d: %v", se.Offset, se)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		f := te.Field
		if f == "" {
			f = "body"
		}
		return model.Invalid(f, "wrong type: want %s, got JSON %s", te.Type, te.Value)
	}
	if s := err.Error(); strings.HasPrefix(s, "json: unknown field ") {
		f := strings.Trim(strings.TrimPrefix(s, "json: unknown field "), `"`)
		return model.Invalid(f, "unknown field")
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return model.Invalid("body", "truncated JSON")
	}
	// A field's own UnmarshalJSON failed (a duration that is not a
	// duration string): find which field by decoding them one at a time.
	if f := failingField(reflect.TypeOf(v).Elem(), data, ""); f != "" {
		return model.Invalid(f, "%v", err)
	}
	return model.Invalid("body", "%v", err)
}

// failingField returns the JSON path of the first member of the object raw
// that does not decode into a value of type t.
func failingField(t reflect.Type, raw []byte, prefix string) string {
	var obj map[string]json.RawMessage
	if t.Kind() != reflect.Struct || json.Unmarshal(raw, &obj) != nil {
		return ""
	}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		one, _ := json.Marshal(map[string]json.RawMessage{k: obj[k]})
		if json.Unmarshal(one, reflect.New(t).Interface()) == nil {
			continue
		}
		if sf, ok := fieldByJSONName(t, k); ok && sf.Type.Kind() == reflect.Struct {
			if sub := failingField(sf.Type, obj[k], prefix+k+"."); sub != "" {
				return sub
			}
		}
		return prefix + k
	}
	return ""
}

func fieldByJSONName(t reflect.Type, name string) (reflect.StructField, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := strings.Split(f.Tag.Get("json"), ",")[0]
		if tag == name || (tag == "" && strings.EqualFold(f.Name, name)) {
			return f, true
		}
	}
	return reflect.StructField{}, false
}
