package controllers

import (
	"bytes"
	"testing"
)

func TestDeriveKeys(t *testing.T) {
	k := DeriveKeys(bytes.Repeat([]byte{7}, 32))
	a, b := k("p/vm-1"), k("p/vm-2")
	if len(a) != 32 || bytes.Equal(a, b) {
		t.Fatal("a key per task")
	}
	if !bytes.Equal(a, DeriveKeys(bytes.Repeat([]byte{7}, 32))("p/vm-1")) {
		t.Fatal("every leader derives the same key")
	}
	if bytes.Equal(a, DeriveKeys(bytes.Repeat([]byte{8}, 32))("p/vm-1")) {
		t.Fatal("another cluster key gives another key")
	}
}

func TestLoops(t *testing.T) {
	r, _ := NewPolicyReconciler(Config{Store: newMemStore(), Inventories: StaticInventories(nil), Components: newFakeComponents()})
	s, _ := NewScheduler(SchedulerConfig{Store: newMemStore(), Components: newFakeComponents()})
	ls := Loops(r, s)
	if len(ls) != 2 || ls[0].Name != "policy" || ls[1].Name != "long-term" {
		t.Fatalf("%+v", ls)
	}
	if _, err := NewPolicyReconciler(Config{}); err == nil {
		t.Fatal("missing dependencies accepted")
	}
	if _, err := NewScheduler(SchedulerConfig{}); err == nil {
		t.Fatal("missing dependencies accepted")
	}
}
