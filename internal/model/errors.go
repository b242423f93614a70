package model

import (
	"errors"
	"fmt"
)

// Stable error codes carried by API errors. They are part of the user-facing
// contract: append, never rename.
const (
	CodeInvalid       = "invalid_argument"
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeUnauthorized  = "unauthorized"
	CodeForbidden     = "forbidden"
	CodeTooLarge      = "body_too_large"
	CodeUnavailable   = "unavailable" // no leader / no quorum
	CodeInternal      = "internal"
	CodeFailedPrecond = "failed_precondition"
)

// Sentinel errors; wrap them with %w so callers can test with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
	ErrInvalid  = errors.New("invalid")
	ErrNoLeader = errors.New("no leader")
	ErrPrecond  = errors.New("failed precondition")
)

// FieldError is a validation failure that names the offending field
// (JSON path, e.g. "rpo" or "vms[2].id").
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Unwrap makes every FieldError match ErrInvalid.
func (e *FieldError) Unwrap() error { return ErrInvalid }

// Invalid builds a FieldError.
func Invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// NotFound says which reference (field) names an object that does not exist.
func NotFound(field, kind, id string) error {
	return &RefError{Field: field, Kind: kind, ID: id, err: ErrNotFound}
}

// Conflict says which field collides with an existing object.
func Conflict(field, kind, id string) error {
	return &RefError{Field: field, Kind: kind, ID: id, err: ErrConflict}
}

// RefError is a not-found or conflict on a named object.
type RefError struct {
	Field string
	Kind  string
	ID    string
	err   error
}

func (e *RefError) Error() string {
	if errors.Is(e.err, ErrConflict) {
		return fmt.Sprintf("%s: %s %q already exists", e.Field, e.Kind, e.ID)
	}
	return fmt.Sprintf("%s: %s %q not found", e.Field, e.Kind, e.ID)
}

func (e *RefError) Unwrap() error { return e.err }

// ErrorField returns the field named by err (FieldError or RefError), or "".
func ErrorField(err error) string {
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe.Field
	}
	var re *RefError
	if errors.As(err, &re) {
		return re.Field
	}
	var pe *PrecondError
	if errors.As(err, &pe) {
		return pe.Field
	}
	return ""
}

// ErrorCode maps an error to its stable API code.
func ErrorCode(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrInvalid):
		return CodeInvalid
	case errors.Is(err, ErrNotFound):
		return CodeNotFound
	case errors.Is(err, ErrConflict):
		return CodeConflict
	case errors.Is(err, ErrNoLeader):
		return CodeUnavailable
	case errors.Is(err, ErrPrecond):
		return CodeFailedPrecond
	default:
		return CodeInternal
	}
}
