package controllers

import (
	"errors"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

func TestSelectProxy(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	px := func(id string, role model.ProxyRole, kind model.ProxyKind, cluster string, max int, age time.Duration) *model.Proxy {
		return &model.Proxy{ID: id, Name: id, Role: role, Kind: kind, ClusterID: cluster, MaxTasks: max, LastHeartbeat: now.Add(-age)}
	}
	const here, there = "vc/c1", "vc/c2"
	cases := []struct {
		name    string
		proxies []*model.Proxy
		role    model.ProxyRole
		manual  []string
		load    map[string]int
		want    string
		wantErr bool
	}{
		{"physical first", []*model.Proxy{
			px("vm-here", model.RoleSource, model.KindVM, here, 10, 0),
			px("phys", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("vm-there", model.RoleSource, model.KindVM, there, 10, 0),
		}, model.RoleSource, nil, nil, "phys", false},
		{"VM in the same cluster second", []*model.Proxy{
			px("vm-there", model.RoleSource, model.KindVM, there, 10, 0),
			px("vm-here", model.RoleSource, model.KindVM, here, 10, 0),
		}, model.RoleSource, nil, nil, "vm-here", false},
		{"any other last", []*model.Proxy{
			px("vm-there", model.RoleTarget, model.KindVM, there, 10, 0),
			px("src-here", model.RoleSource, model.KindVM, here, 10, 0),
		}, model.RoleTarget, nil, nil, "vm-there", false},
		{"least loaded within a rank", []*model.Proxy{
			px("a", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("b", model.RoleSource, model.KindPhysical, "", 4, 0),
		}, model.RoleSource, nil, map[string]int{"a": 5, "b": 1}, "b", false},
		{"rank before load", []*model.Proxy{
			px("phys", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("vm-here", model.RoleSource, model.KindVM, here, 10, 0),
		}, model.RoleSource, nil, map[string]int{"phys": 9}, "phys", false},
		{"full proxy skipped", []*model.Proxy{
			px("phys", model.RoleSource, model.KindPhysical, "", 2, 0),
			px("vm-here", model.RoleSource, model.KindVM, here, 10, 0),
		}, model.RoleSource, nil, map[string]int{"phys": 2}, "vm-here", false},
		{"dead proxy skipped", []*model.Proxy{
			px("phys", model.RoleSource, model.KindPhysical, "", 10, time.Minute),
			px("vm-there", model.RoleSource, model.KindVM, there, 10, time.Second),
		}, model.RoleSource, nil, nil, "vm-there", false},
		{"both serves either role", []*model.Proxy{
			px("both", model.RoleBoth, model.KindVM, there, 10, 0),
		}, model.RoleTarget, nil, nil, "both", false},
		{"manual: only the listed", []*model.Proxy{
			px("phys", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("vm-there", model.RoleSource, model.KindVM, there, 10, 0),
		}, model.RoleSource, []string{"vm-there"}, nil, "vm-there", false},
		{"manual: listed but dead", []*model.Proxy{
			px("phys", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("vm-there", model.RoleSource, model.KindVM, there, 10, time.Hour),
		}, model.RoleSource, []string{"vm-there"}, nil, "", true},
		{"tie broken by ID", []*model.Proxy{
			px("z", model.RoleSource, model.KindPhysical, "", 10, 0),
			px("a", model.RoleSource, model.KindPhysical, "", 10, 0),
		}, model.RoleSource, nil, nil, "a", false},
		{"none of the role", []*model.Proxy{
			px("src", model.RoleSource, model.KindPhysical, "", 10, 0),
		}, model.RoleTarget, nil, nil, "", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := map[string]*model.Proxy{}
			for _, p := range tc.proxies {
				m[p.ID] = p
			}
			got, err := SelectProxy(m, Selection{Role: tc.role, Cluster: here, Manual: tc.manual, Load: tc.load, Now: now, HeartbeatTimeout: 15 * time.Second})
			if tc.wantErr {
				if !errors.Is(err, ErrNoProxy) {
					t.Fatalf("got %v, %v; want ErrNoProxy", got, err)
				}
				return
			}
			if err != nil || got.ID != tc.want {
				t.Fatalf("got %v, %v; want %s", got, err, tc.want)
			}
		})
	}
}

func TestKeepProxy(t *testing.T) {
	now := time.Now()
	m := map[string]*model.Proxy{
		"p": {ID: "p", Role: model.RoleSource, Kind: model.KindVM, LastHeartbeat: now},
		"d": {ID: "d", Role: model.RoleSource, Kind: model.KindVM, LastHeartbeat: now.Add(-time.Hour)},
	}
	sel := Selection{Role: model.RoleSource, Now: now, HeartbeatTimeout: 15 * time.Second}
	if !keepProxy(m, "p", 3, 3, sel) {
		t.Error("an alive proxy of an unchanged policy is kept")
	}
	if keepProxy(m, "p", 2, 3, sel) {
		t.Error("an edited policy selects again")
	}
	if keepProxy(m, "d", 3, 3, sel) {
		t.Error("a dead proxy is replaced")
	}
	if keepProxy(m, "gone", 3, 3, sel) {
		t.Error("a removed proxy is replaced")
	}
	sel.Manual = []string{"other"}
	if keepProxy(m, "p", 3, 3, sel) {
		t.Error("a proxy no longer listed is replaced")
	}
}
