package raftstore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/continuum-cdp/continuum/internal/model"
)

// bufferSink is an in-memory raft.SnapshotSink.
type bufferSink struct {
	bytes.Buffer
	closed, canceled bool
	failAfter        int // fail writes once this many bytes were written; 0: never
}

func (s *bufferSink) Write(p []byte) (int, error) {
	if s.failAfter > 0 && s.Len()+len(p) > s.failAfter {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *bufferSink) ID() string    { return "test" }
func (s *bufferSink) Close() error  { s.closed = true; return nil }
func (s *bufferSink) Cancel() error { s.canceled = true; return nil }

var logIndex uint64

func applyLog(t testing.TB, f *FSM, c Command) applyResult {
	t.Helper()
	b, err := EncodeCommand(c)
	if err != nil {
		t.Fatalf("encode %T: %v", c, err)
	}
	logIndex++
	res, ok := f.Apply(&raft.Log{Index: logIndex, Type: raft.LogCommand, Data: b}).(applyResult)
	if !ok {
		t.Fatalf("apply %T: response is not an applyResult", c)
	}
	return res
}

func fsmBytes(t testing.TB, f *FSM) []byte {
	t.Helper()
	var b []byte
	f.Read(func(s *model.State) { b = stateBytes(t, s) })
	return b
}

// cmdGen makes random commands over small pools of IDs and names so that
// creates, updates, conflicts, misses and references all happen often.
type cmdGen struct{ r *rand.Rand }

func (g cmdGen) id(prefix string) string { return fmt.Sprintf("%s%d", prefix, g.r.Intn(4)) }
func (g cmdGen) name() string            { return fmt.Sprintf("name-%d", g.r.Intn(5)) }
func (g cmdGen) at() time.Time           { return t0.Add(time.Duration(g.r.Intn(100000)) * time.Second) }
func (g cmdGen) bytes() []byte {
	if g.r.Intn(2) == 0 {
		return nil
	}
	b := make([]byte, 1+g.r.Intn(40))
	g.r.Read(b)
	return b
}

func (g cmdGen) policy() model.Policy {
	p := testPolicy(g.id("pol"), g.name(), g.id("vc"))
	p.Target.VCenterID = g.id("vc")
	p.Enabled = g.r.Intn(2) == 0
	p.Description = fmt.Sprintf("d%d", g.r.Intn(1000))
	p.CreatedAt, p.UpdatedAt = g.at(), g.at()
	p.Generation = int64(g.r.Intn(3)) // ignored by the FSM
	switch g.r.Intn(4) {
	case 0:
		p.ProxySelection = model.SelectManual
		p.SourceProxies = []string{g.id("px")}
		p.TargetProxies = []string{g.id("px"), g.id("px")}
	case 1:
		p.RPO = 0 // invalid
	}
	return p
}

func (g cmdGen) next() Command {
	create := g.r.Intn(2) == 0
	switch g.r.Intn(29) {
	case 0:
		v := testVCenter(g.id("vc"), g.name())
		v.PasswordSealed = g.bytes()
		v.CreatedAt = g.at()
		if g.r.Intn(8) == 0 {
			v.URL = "ftp://nope"
		}
		return PutVCenter{VCenter: v, Create: create}
	case 1:
		return DeleteVCenter{ID: g.id("vc")}
	case 2:
		return PutVCDServer{VCDServer: model.VCDServer{ID: g.id("vcd"), Name: g.name(), URL: "https://vcd", Org: "o", PasswordSealed: g.bytes(), CreatedAt: g.at()}, Create: create}
	case 3:
		return DeleteVCDServer{ID: g.id("vcd")}
	case 4:
		return PutCluster{Cluster: model.Cluster{ID: g.id("cl"), VCenterID: g.id("vc"), MoRef: "domain-c1", Name: g.name(), FilterState: model.FilterInstalled}}
	case 5:
		return DeleteCluster{ID: g.id("cl")}
	case 6:
		return PutHost{Host: model.Host{ID: g.id("h"), VCenterID: g.id("vc"), MoRef: "host-1", Name: g.name(), LastHeartbeat: g.at()}}
	case 7:
		return DeleteHost{ID: g.id("h")}
	case 8:
		p := testProxy(g.id("px"), g.name())
		if g.r.Intn(3) == 0 {
			p.Role = model.RoleSource
		}
		p.CreatedAt = g.at()
		return PutProxy{Proxy: p, Create: create}
	case 9:
		return DeleteProxy{ID: g.id("px")}
	case 10:
		return ProxyHeartbeat{ID: g.id("px"), At: g.at()}
	case 11, 12, 13:
		var exp int64
		if g.r.Intn(3) == 0 {
			exp = int64(1 + g.r.Intn(3))
		}
		return PutPolicy{Policy: g.policy(), Create: create, ExpectGeneration: exp}
	case 14:
		return SetPolicyEnabled{ID: g.id("pol"), Enabled: g.r.Intn(2) == 0}
	case 15:
		return DeletePolicy{ID: g.id("pol")}
	case 16:
		return PutTask{Task: model.VMTask{ID: g.id("t"), PolicyID: g.id("pol"), VMMoRef: "vm-1", Status: model.StatusSyncing,
			SourceHost: g.id("h"), SourceProxy: g.id("px"),
			Disks: []model.DiskMap{{Key: 2000, CapacityBytes: 1 << 20}}, LagSeconds: float64(g.r.Intn(10)) / 4, UpdatedAt: g.at()}}
	case 17:
		return DeleteTask{ID: g.id("t")}
	case 18:
		return PutReplica{Replica: model.Replica{ID: g.id("r"), PolicyID: g.id("pol"), Name: g.name(), CreatedAt: g.at()}}
	case 19:
		return DeleteReplica{ID: g.id("r")}
	case 20:
		return PutRestorePoint{RestorePoint: model.RestorePoint{ID: g.id("rp"), PolicyID: g.id("pol"), Kind: model.PointLongTerm, Time: g.at()}}
	case 21:
		return DeleteRestorePoint{ID: g.id("rp")}
	case 22:
		return PutTrafficRule{TrafficRule: model.TrafficRule{ID: g.id("tr"), Name: g.name(), SourceCIDR: "10.0.0.0/8", TargetCIDR: "192.168.0.0/16", Encrypt: g.r.Intn(2) == 0}, Create: create}
	case 23:
		return DeleteTrafficRule{ID: g.id("tr")}
	case 24:
		return PutTenant{Tenant: model.Tenant{ID: g.id("tn"), Name: g.name(), KeySealed: g.bytes(), QuotaVMs: g.r.Intn(10), CreatedAt: g.at()}, Create: create}
	case 25:
		if g.r.Intn(2) == 0 {
			return DeleteTenant{ID: g.id("tn")}
		}
		return DeleteToken{ID: g.id("tok")}
	case 26:
		return PutToken{Token: model.Token{ID: g.id("tok"), Role: model.TokenAdmin, SHA256: "ab", CreatedAt: g.at()}}
	case 27:
		return g.heartbeat()
	default:
		if g.r.Intn(2) == 0 {
			return DeleteCoordinator{ID: g.id("co")}
		}
		return PutCoordinator{Coordinator: model.Coordinator{ID: g.id("co"), RaftAddr: "127.0.0.1:1", APIAddr: "127.0.0.1:2"}}
	}
}

func (g cmdGen) heartbeat() Command {
	c := ComponentHeartbeat{Kind: model.ComponentFilter, ID: g.id("h"), At: g.at(), DataAddr: "127.0.0.1:7000"}
	if g.r.Intn(2) == 0 {
		c.Kind, c.ID = model.ComponentProxy, g.id("px")
	}
	statuses := []model.VMStatus{model.StatusInitialSync, model.StatusSyncing, model.StatusCBT, "Bogus"}
	for range g.r.Intn(3) {
		v := model.VMReport{TaskID: g.id("t"), LagSeconds: float64(g.r.Intn(40)), SyncDoneBytes: int64(g.r.Intn(10)), SyncTotalBytes: 10}
		if c.Kind == model.ComponentFilter || g.r.Intn(4) == 0 {
			v.Status = statuses[g.r.Intn(len(statuses))]
		}
		c.VMs = append(c.VMs, v)
	}
	return c
}

func snapshotOf(t testing.TB, f *FSM) raft.FSMSnapshot {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return snap
}

func persistRestore(t testing.TB, snap raft.FSMSnapshot) *FSM {
	t.Helper()
	sink := &bufferSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.canceled {
		t.Fatalf("persist left sink closed=%v canceled=%v", sink.closed, sink.canceled)
	}
	g := NewFSM(nil)
	if err := g.Restore(io.NopCloser(&sink.Buffer)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	return g
}

// TestSnapshotRestoreProperty applies random command sequences, checks that
// failed commands change nothing, and that a snapshot taken midway restores
// to exactly the state at that moment even though the FSM moved on.
func TestSnapshotRestoreProperty(t *testing.T) {
	r := rand.New(rand.NewSource(42))
	g := cmdGen{r: r}
	var applied, failed int
	for seq := range 300 {
		f := NewFSM(nil)
		n := 1 + r.Intn(80)
		mid := r.Intn(n)
		var midSnap raft.FSMSnapshot
		var midState *model.State
		for i := range n {
			if i == mid {
				midSnap = snapshotOf(t, f)
				f.Read(func(s *model.State) { midState = deepCopy(t, s) })
			}
			c := g.next()
			before := fsmBytes(t, f)
			res := applyLog(t, f, c)
			if res.Err != nil {
				failed++
				if model.ErrorCode(res.Err) == model.CodeInternal {
					t.Fatalf("seq %d: %T failed with an untyped error: %v", seq, c, res.Err)
				}
				if after := fsmBytes(t, f); !bytes.Equal(before, after) {
					t.Fatalf("seq %d: failed %T (%v) changed the state", seq, c, res.Err)
				}
			} else {
				applied++
			}
		}
		var final *model.State
		f.Read(func(s *model.State) { final = s })
		if got := persistRestore(t, snapshotOf(t, f)); !reflect.DeepEqual(got.state, final) {
			t.Fatalf("seq %d: restored state differs from the original", seq)
		}
		if got := persistRestore(t, midSnap); !reflect.DeepEqual(got.state, midState) {
			t.Fatalf("seq %d: snapshot taken at command %d changed after later applies", seq, mid)
		}
	}
	if applied < 1000 || failed < 1000 {
		t.Fatalf("generator too one-sided: %d applied, %d failed", applied, failed)
	}
}

func deepCopy(t testing.TB, s *model.State) *model.State {
	t.Helper()
	var buf bytes.Buffer
	if err := writeSnapshot(&buf, s); err != nil {
		t.Fatal(err)
	}
	c, err := readSnapshot(&buf)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestPersistCancelsSinkOnError(t *testing.T) {
	f := NewFSM(nil)
	applyLog(t, f, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	sink := &bufferSink{failAfter: 10}
	if err := snapshotOf(t, f).Persist(sink); err == nil {
		t.Fatalf("persist to a failing sink succeeded")
	}
	if !sink.canceled || sink.closed {
		t.Fatalf("sink canceled=%v closed=%v, want canceled only", sink.canceled, sink.closed)
	}
}

func TestRestoreRejectsDamagedSnapshot(t *testing.T) {
	f := NewFSM(nil)
	applyLog(t, f, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	applyLog(t, f, PutProxy{Proxy: testProxy("px1", "p1"), Create: true})
	sink := &bufferSink{}
	if err := snapshotOf(t, f).Persist(sink); err != nil {
		t.Fatal(err)
	}
	good := sink.Bytes()
	cases := map[string][]byte{
		"empty":     {},
		"truncated": good[:len(good)-3],
		"bit flip":  flip(good, len(good)/2),
		"trailing":  append(bytes.Clone(good), 0),
		"magic":     flip(good, 0),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			g := NewFSM(nil)
			applyLog(t, g, PutVCenter{VCenter: testVCenter("keep", "keep"), Create: true})
			before := fsmBytes(t, g)
			if err := g.Restore(io.NopCloser(bytes.NewReader(b))); err == nil {
				t.Fatalf("restore of a %s snapshot succeeded", name)
			}
			if !bytes.Equal(before, fsmBytes(t, g)) {
				t.Fatalf("failed restore changed the state")
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 0x40
	return c
}

func TestUnknownCommandTypes(t *testing.T) {
	f := NewFSM(nil)
	applyLog(t, f, PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true})
	before := fsmBytes(t, f)

	res := f.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: append([]byte{byte(0x7e | IgnoreUnknownFlag)}, `{"x":1}`...)})
	if r, ok := res.(applyResult); !ok || r.Err != nil || r.Value != nil {
		t.Fatalf("ignorable unknown command: got %#v", res)
	}
	if !bytes.Equal(before, fsmBytes(t, f)) {
		t.Fatalf("skipped command changed the state")
	}

	mustPanic := func(name string, data []byte) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Fatalf("%s: FSM did not stop", name)
			}
		}()
		f.Apply(&raft.Log{Index: 101, Type: raft.LogCommand, Data: data})
	}
	mustPanic("unknown type without flag", append([]byte{0x7e}, `{}`...))
	mustPanic("known type with a bad payload", append([]byte{byte(CmdPutPolicy)}, `{"policy":`...))
	mustPanic("empty entry", nil)
	if !bytes.Equal(before, fsmBytes(t, f)) {
		t.Fatalf("refused command changed the state")
	}

	// A known type carrying the flag is still applied by a node that knows it.
	b, _ := EncodeCommand(DeleteVCenter{ID: "vc1"})
	b[0] |= byte(IgnoreUnknownFlag)
	if r := f.Apply(&raft.Log{Index: 102, Type: raft.LogCommand, Data: b}).(applyResult); r.Err != nil {
		t.Fatalf("flagged known command: %v", r.Err)
	}
	f.Read(func(s *model.State) {
		if len(s.VCenters) != 0 {
			t.Fatalf("flagged known command was not applied")
		}
	})
}

func TestRegisterDuplicatePanics(t *testing.T) {
	defer func() {
		r := recover()
		if r == nil || !strings.Contains(fmt.Sprint(r), "registered twice") {
			t.Fatalf("duplicate registration: recover() = %v", r)
		}
	}()
	register(func(*model.State, PutHost) (any, error) { return nil, nil })
}

func TestEveryCommandTypeRegistered(t *testing.T) {
	for _, c := range allCommands() {
		b, err := EncodeCommand(c)
		if err != nil {
			t.Fatalf("encode %T: %v", c, err)
		}
		d, err := DecodeCommand(b)
		if err != nil {
			t.Fatalf("decode %T: %v", c, err)
		}
		if !reflect.DeepEqual(d, c) {
			t.Fatalf("round trip of %T: got %#v", c, d)
		}
	}
	if len(allCommands()) != int(CmdPutTasks) {
		t.Fatalf("allCommands lists %d commands, %d types exist", len(allCommands()), CmdPutTasks)
	}
}

// allCommands has one value of every command type, also the fuzz seed.
func allCommands() []Command {
	pol := testPolicy("p1", "pol", "vc1")
	return []Command{
		PutVCenter{VCenter: testVCenter("vc1", "one"), Create: true}, DeleteVCenter{ID: "vc1"},
		PutVCDServer{VCDServer: model.VCDServer{ID: "d1", Name: "d", URL: "https://d"}}, DeleteVCDServer{ID: "d1"},
		PutCluster{Cluster: model.Cluster{ID: "c1", VCenterID: "vc1"}}, DeleteCluster{ID: "c1"},
		PutHost{Host: model.Host{ID: "h1", VCenterID: "vc1"}}, DeleteHost{ID: "h1"},
		PutProxy{Proxy: testProxy("px1", "px")}, DeleteProxy{ID: "px1"},
		ProxyHeartbeat{ID: "px1", At: t0},
		PutPolicy{Policy: pol, ExpectGeneration: 3}, SetPolicyEnabled{ID: "p1", Enabled: true}, DeletePolicy{ID: "p1"},
		PutTask{Task: model.VMTask{ID: "t1", PolicyID: "p1", UpdatedAt: t0}}, DeleteTask{ID: "t1"},
		PutReplica{Replica: model.Replica{ID: "r1", CreatedAt: t0}}, DeleteReplica{ID: "r1"},
		PutRestorePoint{RestorePoint: model.RestorePoint{ID: "rp1", Time: t0}}, DeleteRestorePoint{ID: "rp1"},
		PutTrafficRule{TrafficRule: model.TrafficRule{ID: "tr1", Name: "tr", SourceCIDR: "10.0.0.0/8", TargetCIDR: "10.0.0.0/8"}}, DeleteTrafficRule{ID: "tr1"},
		PutTenant{Tenant: model.Tenant{ID: "tn1", Name: "tn", KeySealed: []byte{1, 2}, CreatedAt: t0}}, DeleteTenant{ID: "tn1"},
		PutToken{Token: model.Token{ID: "tok1", Role: model.TokenJoin, SHA256: "ff", CreatedAt: t0}}, DeleteToken{ID: "tok1"},
		PutCoordinator{Coordinator: model.Coordinator{ID: "n1", RaftAddr: "127.0.0.1:1"}}, DeleteCoordinator{ID: "n1"},
		ComponentHeartbeat{Kind: model.ComponentFilter, ID: "vc1/host-1", At: t0, DataAddr: "127.0.0.1:7000",
			VMs: []model.VMReport{{TaskID: "t1", VM: "vm", Status: model.StatusSyncing, LastPointAt: t0}}},
		PutTasks{Tasks: []model.VMTask{{ID: "t2", PolicyID: "p1", UpdatedAt: t0}}},
	}
}

func FuzzDecodeCommand(f *testing.F) {
	for _, c := range allCommands() {
		b, err := EncodeCommand(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		flagged := bytes.Clone(b)
		flagged[0] |= byte(IgnoreUnknownFlag)
		f.Add(flagged)
	}
	f.Add([]byte{})
	f.Add([]byte{0x7f, '{', '}'})
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := DecodeCommand(b)
		if err != nil {
			if c != nil {
				t.Fatalf("error %v with a command %T", err, c)
			}
			var unk *UnknownCommandError
			if errors.As(err, &unk) {
				if len(b) == 0 || registry[b[0]&^byte(IgnoreUnknownFlag)] != nil {
					t.Fatalf("unknown-type error for a known type: %v", err)
				}
				if unk.Skippable != (b[0]&byte(IgnoreUnknownFlag) != 0) {
					t.Fatalf("skippable = %v for type byte %#x", unk.Skippable, b[0])
				}
			}
			return
		}
		if c.Type()&^IgnoreUnknownFlag != CmdType(b[0])&^IgnoreUnknownFlag {
			t.Fatalf("decoded %T from type byte %#x", c, b[0])
		}
		// Whatever decodes must apply without panicking and re-encode.
		s := model.NewState()
		_, _ = applyCommand(s, c)
		if _, err := EncodeCommand(c); err != nil {
			t.Fatalf("re-encode %T: %v", c, err)
		}
	})
}
