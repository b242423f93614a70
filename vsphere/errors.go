package vsphere

import (
	"context"
	"errors"
	"net"
	"net/url"
	"syscall"

	"github.com/vmware/govmomi/fault"
	"github.com/vmware/govmomi/task"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
)

// Error kinds, for errors.Is. Every error of this package wraps one of them
// when the cause is known, and keeps the vSphere fault beneath for fault.Is.
var (
	ErrNotFound            = errors.New("not found")
	ErrAuth                = errors.New("authentication failed")
	ErrUnreachable         = errors.New("vCenter unreachable")
	ErrDatastoreNotMounted = errors.New("datastore not mounted on host")
	ErrInvalid             = errors.New("invalid argument")
	ErrConflict            = errors.New("conflict")
	ErrTaskFailed          = errors.New("task failed")
	ErrFault               = errors.New("vSphere fault")
	ErrCertificate         = errors.New("vCenter certificate not trusted")
)

// opError carries what was being done, the kind, and the cause.
type opError struct {
	op   string
	kind error
	err  error
}

func (e *opError) Error() string {
	if e.err == nil {
		return e.op + ": " + e.kind.Error()
	}
	return e.op + ": " + e.err.Error()
}

func (e *opError) Unwrap() []error {
	if e.err == nil {
		return []error{e.kind}
	}
	return []error{e.kind, e.err}
}

// wrap classifies err and prefixes it with op.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	var oe *opError
	if errors.As(err, &oe) {
		return &opError{op: op, kind: oe.kind, err: err}
	}
	return &opError{op: op, kind: classify(err), err: err}
}

// fail builds an error of a known kind.
func fail(op string, kind error, err error) error {
	return &opError{op: op, kind: kind, err: err}
}

func classify(err error) error {
	switch {
	case fault.Is(err, &types.InvalidLogin{}), fault.Is(err, &types.NotAuthenticated{}), fault.Is(err, &types.NoPermission{}):
		return ErrAuth
	case fault.Is(err, &types.ManagedObjectNotFound{}), fault.Is(err, &types.NotFound{}):
		return ErrNotFound
	case fault.Is(err, &types.InvalidArgument{}), fault.Is(err, &types.InvalidRequest{}):
		return ErrInvalid
	case fault.Is(err, &types.DuplicateName{}), fault.Is(err, &types.AlreadyExists{}), fault.Is(err, &types.FileAlreadyExists{}):
		return ErrConflict
	case soap.IsCertificateUntrusted(err):
		return ErrCertificate
	case isNetwork(err):
		return ErrUnreachable
	}
	var te task.Error
	if errors.As(err, &te) {
		return ErrTaskFailed
	}
	return ErrFault
}

func isNetwork(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	var ue *url.Error
	return errors.As(err, &ne) || errors.As(err, &ue) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, net.ErrClosed)
}
