package model

import "fmt"

// PrecondError is a failed precondition on the state (a stale generation, an
// object still in use) that names the field it is about.
type PrecondError struct {
	Field  string
	Reason string
}

func (e *PrecondError) Error() string { return fmt.Sprintf("%s: %s", e.Field, e.Reason) }

// Unwrap makes every PrecondError match ErrPrecond.
func (e *PrecondError) Unwrap() error { return ErrPrecond }

// Precond builds a PrecondError.
func Precond(field, format string, args ...any) error {
	return &PrecondError{Field: field, Reason: fmt.Sprintf(format, args...)}
}
