package controllers

import (
	"context"
	"errors"
	"testing"

	"github.com/continuum-cdp/continuum/internal/model"
	"github.com/continuum-cdp/continuum/raftstore"
	"github.com/continuum-cdp/continuum/vcsim"
)

func TestConnector(t *testing.T) {
	l := newLab(t, 1, false)
	st := newMemStore()
	seal := func(b []byte) []byte { return append([]byte("sealed:"), b...) }
	unseal := func(b []byte) ([]byte, error) {
		if len(b) < 7 || string(b[:7]) != "sealed:" {
			return nil, raftstore.ErrSealed
		}
		return b[7:], nil
	}
	vc := model.VCenter{ID: vcID, Name: "lab", URL: l.srv.SDKURL(), Username: vcsim.Username, PasswordSealed: seal([]byte(vcsim.Password)), Insecure: true}
	mustApply(t, st, raftstore.PutVCenter{VCenter: vc})
	c := &Connector{Store: st, Unseal: unseal}
	defer c.Close(context.Background())
	ctx := l.ctx
	a, err := c.Get(ctx, vcID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Inventory(ctx); err != nil {
		t.Fatal(err)
	}
	if b, _ := c.Get(ctx, vcID); b != a {
		t.Fatal("an unchanged registration reuses its connection")
	}
	if _, err := c.Get(ctx, "nope"); !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("unknown vCenter: %v", err)
	}
	vc.PasswordSealed = seal([]byte("wrong"))
	mustApply(t, st, raftstore.PutVCenter{VCenter: vc})
	if _, err := c.Get(ctx, vcID); err == nil {
		t.Fatal("a changed password must log in again and fail")
	}
	vc.PasswordSealed = []byte("garbage")
	mustApply(t, st, raftstore.PutVCenter{VCenter: vc})
	if _, err := c.Get(ctx, vcID); !errors.Is(err, raftstore.ErrSealed) {
		t.Fatalf("unsealable password: %v", err)
	}
}
