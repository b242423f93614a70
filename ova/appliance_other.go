//go:build !linux

package ova

import (
	"context"
	"errors"
)

func runAppliance(context.Context, string) error {
	return errors.New("appliance-init runs only inside the Linux appliance")
}
