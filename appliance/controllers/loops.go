package controllers

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
)

// Loop is a named leader-only loop, the shape of the coordinator's
// leader-runner controllers.
type Loop struct {
	Name string
	Run  func(ctx context.Context) error
}

// Loops lists the loops to start on the leader.
func Loops(r *PolicyReconciler, s *Scheduler) []Loop {
	var out []Loop
	if r != nil {
		out = append(out, Loop{Name: "policy", Run: r.Run})
	}
	if s != nil {
		out = append(out, Loop{Name: "long-term", Run: s.Run})
	}
	return out
}

// StaticInventories serves a fixed set of vCenter connections by ID.
func StaticInventories(m map[string]Inventory) Inventories {
	return func(_ context.Context, id string) (Inventory, error) {
		if inv, ok := m[id]; ok {
			return inv, nil
		}
		return nil, fmt.Errorf("vCenter %s is not connected", id)
	}
}

// DeriveKeys gives each task a data-path key derived from the cluster key,
// so every leader pushes the same key without storing it.
func DeriveKeys(clusterKey []byte) func(taskID string) []byte {
	k := append([]byte(nil), clusterKey...)
	return func(taskID string) []byte {
		m := hmac.New(sha256.New, k)
		m.Write([]byte("continuum data-path key\x00" + taskID))
		return m.Sum(nil)
	}
}
