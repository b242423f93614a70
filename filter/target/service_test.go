package target

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// sendWorkload sends an initial sync then n short-term points, each
// acknowledged before the next, and returns the model.
func sendWorkload(t *testing.T, pc *proxyConn, r *rand.Rand, disks []wire.Disk, n int, codec wire.Codec) *diskModel {
	t.Helper()
	m := newModel(disks)
	init := fullDisks(r, disks)
	pc.send(point(t, 1, wire.PointInitial, wire.MarkerNone, init[:1], codec))
	pc.expectAck(1)
	m.apply(1, init[:1])
	pc.send(point(t, 2, wire.PointInitial, wire.MarkerInitialSyncDone, init[1:], codec))
	pc.expectAck(2)
	m.apply(2, init[1:])
	for id := uint64(3); id < uint64(3+n); id++ {
		ext := randomExtents(r, disks, 1+r.IntN(6))
		pc.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, ext, codec))
		pc.expectAck(id)
		m.apply(id, ext)
	}
	return m
}

func TestTargetFilterAppendAckRestore(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	for i, codec := range []wire.Codec{wire.CodecNone, wire.CodecS2} {
		vm := fmt.Sprintf("vm-%d", i)
		pc, ack := dialService(t, s, vm, testDisks)
		if ack.Err != "" || ack.Resume != 0 || ack.InitialSyncDone {
			t.Fatalf("fresh VM hello ack: %+v", ack)
		}
		m := sendWorkload(t, pc, rand.New(rand.NewPCG(uint64(i), 1)), testDisks, 8, codec)
		pts := checkPoints(t, s, vm, m)
		if len(pts) != 9 || pts[0].ID != 2 || pts[0].Kind != "long-term" || pts[1].Kind != "short-term" {
			t.Fatalf("listing: %+v", pts)
		}
		// A second session resumes where the journal is.
		pc.c.Close()
		_, ack = dialService(t, s, vm, testDisks)
		if ack.Resume != 10 || !ack.InitialSyncDone {
			t.Fatalf("resume: %+v", ack)
		}
	}
	var vms []VMInfo
	getJSON(t, "http://"+s.AdminAddr()+"/v1/vms", &vms)
	if len(vms) != 2 || vms[0].VM != "vm-0" || vms[0].LastID != 10 || len(vms[0].Disks) != 2 || vms[0].Points != 9 {
		t.Fatalf("vms: %+v", vms)
	}
}

func TestTargetFilterResendIsIdempotent(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	pc, _ := dialService(t, s, "vm", testDisks)
	r := rand.New(rand.NewPCG(5, 5))
	m := sendWorkload(t, pc, r, testDisks, 3, wire.CodecNone)
	// Resend point 4 with other content: acknowledged, not applied.
	pc.send(point(t, 4, wire.PointShortTerm, wire.MarkerNone, randomExtents(r, testDisks, 3), wire.CodecNone))
	pc.expectAck(4)
	pts := checkPoints(t, s, "vm", m)
	if len(pts) != 4 {
		t.Fatalf("duplicate listed: %+v", pts)
	}
}

// TestTargetFilterCrashResume cuts the service mid-stream without a drain,
// reopens the journal and resends from the resume point: every point
// acknowledged before the cut restores exactly, none is listed twice.
func TestTargetFilterCrashResume(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewPCG(7, 7))
	s1, err := New(Config{JournalDir: dir, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s1.Run(t.Context()) }()
	pc, _ := dialService(t, s1, "vm", testDisks)
	m := sendWorkload(t, pc, r, testDisks, 2, wire.CodecNone)
	// Pipeline many points, then cut while they are in flight.
	sent := map[uint64][]wire.Extent{}
	for id := uint64(5); id < 45; id++ {
		ext := randomExtents(r, testDisks, 4)
		sent[id] = ext
		pc.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, ext, wire.CodecS2))
	}
	var acked uint64 = 4
	for acked < 15 {
		m, err := pc.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		acked = m.(*wire.PointAck).ID
	}
	s1.Close()
	<-done
	// Acks that were already on their way still count.
	for {
		m, err := pc.next(time.Second)
		if err != nil {
			break
		}
		if a, ok := m.(*wire.PointAck); ok {
			acked = a.ID
		}
	}

	s2 := startService(t, Config{JournalDir: dir})
	pc2, ack := dialService(t, s2, "vm", testDisks)
	if ack.Resume < acked {
		t.Fatalf("resume %d below acknowledged %d", ack.Resume, acked)
	}
	for id := uint64(5); id < 45; id++ {
		if id <= ack.Resume {
			m.apply(id, sent[id])
			continue
		}
		pc2.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, sent[id], wire.CodecNone))
		pc2.expectAck(id)
		m.apply(id, sent[id])
	}
	pts := checkPoints(t, s2, "vm", m)
	if len(pts) != 43 {
		t.Fatalf("%d points listed, want 43", len(pts))
	}
}

func TestTargetFilterNoSpace(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir(), Journal: journal.Options{SegmentBytes: 1 << 20}})
	pc, _ := dialService(t, s, "vm", testDisks)
	r := rand.New(rand.NewPCG(3, 3))
	m := sendWorkload(t, pc, r, testDisks, 1, wire.CodecNone)
	s.Store().SetMaxBytes(s.Store().UsedBytes())
	big := []wire.Extent{{Disk: 2000, Off: 0, Op: wire.OpData, Len: 200 << 10, Data: bytes.Repeat([]byte{7}, 200<<10)}}
	// Fill until the store refuses; every ack must precede the refusal.
	var refused uint64
	for id := uint64(4); id < 40 && refused == 0; id++ {
		pc.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, big, wire.CodecNone))
		msg, err := pc.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		switch v := msg.(type) {
		case *wire.PointAck:
			m.apply(id, big)
		case *wire.Error:
			if v.Code != wire.ErrCodeNoSpace {
				t.Fatalf("error %+v", v)
			}
			refused = id
		}
	}
	if refused == 0 {
		t.Fatal("store never reported a full datastore")
	}
	vm, _ := s.Store().VM("vm")
	if vm.LastID() != refused-1 {
		t.Fatalf("last id %d after refusing %d", vm.LastID(), refused)
	}
	// No ack arrives for the refused point while space is short.
	pc.send(&wire.Heartbeat{})
	if msg, err := pc.next(300 * time.Millisecond); err == nil {
		if a, ok := msg.(*wire.PointAck); ok {
			t.Fatalf("ack %d while the datastore is full", a.ID)
		}
	}
	checkPoints(t, s, "vm", m)
	// Space is back: the held point is appended on the next heartbeat.
	s.Store().SetMaxBytes(0)
	pc2, _ := dialService(t, s, "vm", testDisks) // a fresh session resends
	pc2.send(point(t, refused, wire.PointShortTerm, wire.MarkerNone, big, wire.CodecNone))
	pc2.expectAck(refused)
	m.apply(refused, big)
	checkPoints(t, s, "vm", m)
}

func TestTargetFilterNoSpaceRetryOnSameSession(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir(), Journal: journal.Options{SegmentBytes: 1 << 20}})
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(4, 4)), testDisks, 1, wire.CodecNone)
	s.Store().SetMaxBytes(s.Store().UsedBytes())
	big := []wire.Extent{{Disk: 2000, Off: 0, Op: wire.OpData, Len: 200 << 10, Data: bytes.Repeat([]byte{9}, 200<<10)}}
	id := uint64(4)
	for ; ; id++ {
		pc.send(point(t, id, wire.PointShortTerm, wire.MarkerNone, big, wire.CodecNone))
		msg, err := pc.next(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*wire.Error); ok {
			break
		}
		m.apply(id, big)
	}
	s.Store().SetMaxBytes(0)
	pc.send(&wire.Heartbeat{})
	pc.expectAck(id)
	m.apply(id, big)
	pc.send(point(t, id+1, wire.PointShortTerm, wire.MarkerNone, big[:0], wire.CodecNone))
	pc.expectAck(id + 1)
	m.apply(id+1, nil)
	checkPoints(t, s, "vm", m)
}

func TestTargetFilterRejectsBadInput(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(8, 8)), testDisks, 2, wire.CodecNone)
	vm, _ := s.Store().VM("vm")
	last := vm.LastID()
	ext := []wire.Extent{{Disk: 2000, Off: 0, Op: wire.OpData, Len: 4, Data: []byte("evil")}}
	good := point(t, last+1, wire.PointShortTerm, wire.MarkerNone, ext, wire.CodecNone)
	frame, err := wire.AppendFrame(nil, good)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"corrupt":   func() []byte { b := bytes.Clone(frame); b[len(b)-8] ^= 1; return b }(),
		"truncated": frame[:len(frame)-3],
		"out of range": func() []byte {
			p := point(t, last+1, wire.PointShortTerm, wire.MarkerNone, []wire.Extent{{Disk: 2000, Off: 1 << 30, Op: wire.OpZero, Len: 5}}, wire.CodecNone)
			b, _ := wire.AppendFrame(nil, p)
			return b
		}(),
		"unknown disk": func() []byte {
			p := point(t, last+1, wire.PointShortTerm, wire.MarkerNone, []wire.Extent{{Disk: 9, Off: 0, Op: wire.OpZero, Len: 5}}, wire.CodecNone)
			b, _ := wire.AppendFrame(nil, p)
			return b
		}(),
		"encrypted": func() []byte {
			sl, _ := wire.NewSealer(bytes.Repeat([]byte{1}, 32))
			p := &wire.Point{ID: last + 1, Kind: wire.PointShortTerm}
			_ = wire.EncodePoint(p, ext, wire.PointOptions{Sealer: sl, VM: "vm"})
			b, _ := wire.AppendFrame(nil, p)
			return b
		}(),
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			pc, _ := dialService(t, s, "vm", testDisks)
			if _, err := pc.c.NetConn().Write(b); err != nil {
				t.Fatal(err)
			}
			if name == "truncated" {
				pc.c.NetConn().(interface{ CloseWrite() error }).CloseWrite()
			}
			for {
				msg, err := pc.next(10 * time.Second)
				if err != nil {
					if errors.Is(err, os.ErrDeadlineExceeded) {
						t.Fatal("connection not dropped")
					}
					break
				}
				if a, ok := msg.(*wire.PointAck); ok {
					t.Fatalf("bad frame acknowledged: %d", a.ID)
				}
			}
			if vm.LastID() != last {
				t.Fatalf("journal changed: last id %d, was %d", vm.LastID(), last)
			}
		})
	}
	checkPoints(t, s, "vm", m)
}

func TestTargetFilterHandshakeRefusals(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	_, ack := dialService(t, s, "vm", testDisks)
	if ack.Err != "" {
		t.Fatal(ack.Err)
	}
	_, ack = dialService(t, s, "vm", []wire.Disk{{Key: 2000, Capacity: 4096}})
	if ack.Err == "" {
		t.Fatal("changed disk capacity accepted")
	}
	_, ack = dialService(t, s, "", testDisks)
	if ack.Err == "" {
		t.Fatal("empty VM accepted")
	}
	// A disk added to the VM is added to the journal.
	grown := append(append([]wire.Disk(nil), testDisks...), wire.Disk{Key: 2002, Capacity: 64 << 10})
	_, ack = dialService(t, s, "vm", grown)
	if ack.Err != "" {
		t.Fatalf("added disk refused: %s", ack.Err)
	}
	vm, _ := s.Store().VM("vm")
	if len(vm.Disks()) != 3 {
		t.Fatalf("disks %+v", vm.Disks())
	}
}

func post(t *testing.T, url string, body any, out any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == 200 {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, string(raw)
}

func TestTargetFilterAdminAPI(t *testing.T) {
	exportDir := t.TempDir()
	s := startService(t, Config{JournalDir: t.TempDir(), ExportDir: exportDir})
	base := "http://" + s.AdminAddr()
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(2, 2)), testDisks, 4, wire.CodecNone)

	resp, err := http.Get(base + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	resp, _ = http.Get(base + "/metrics")
	mb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(mb), "continuum_target_filter_points_total 6") {
		t.Fatalf("metrics do not count the points:\n%s", mb)
	}

	// Export writes a raw image equal to the model.
	out := filepath.Join(exportDir, "d.raw")
	var er ExportResult
	if code, body := post(t, base+"/v1/vms/vm/export", ExportRequest{Point: 4, Disk: 2001, Path: out}, &er); code != 200 {
		t.Fatalf("export: %d %s", code, body)
	}
	got, _ := os.ReadFile(out)
	if !bytes.Equal(got, m.at[4][2001]) {
		t.Fatal("exported image differs")
	}
	for name, c := range map[string]struct {
		body any
		code int
	}{
		"outside export dir": {ExportRequest{Point: 4, Disk: 2001, Path: "/tmp/x.raw"}, 400},
		"relative path":      {ExportRequest{Point: 4, Disk: 2001, Path: "x.raw"}, 400},
		"unlisted point":     {ExportRequest{Point: 1, Disk: 2001, Path: filepath.Join(exportDir, "y")}, 404},
		"unknown field":      {map[string]any{"pointz": 1}, 400},
	} {
		if code, body := post(t, base+"/v1/vms/vm/export", c.body, nil); code != c.code {
			t.Errorf("%s: %d %s, want %d", name, code, body, c.code)
		}
	}
	if code, _ := post(t, base+"/v1/vms/nope/export", ExportRequest{}, nil); code != 404 {
		t.Errorf("unknown vm: %d", code)
	}

	// Long-term point, then retention that folds everything older.
	var lt PointInfo
	if code, body := post(t, base+"/v1/vms/vm/long-term", nil, &lt); code != 200 || lt.ID != 6 || lt.Kind != "long-term" {
		t.Fatalf("long-term: %d %s %+v", code, body, lt)
	}
	if code, body := post(t, base+"/v1/vms/vm/retention", map[string]string{"short_term": "1ns", "long_term": "0s"}, nil); code != 200 {
		t.Fatalf("retention: %d %s", code, body)
	}
	pts := checkPoints(t, s, "vm", m)
	for _, p := range pts {
		if p.Kind == "short-term" && p.ID != 6 {
			t.Fatalf("short-term point %d survived a 1ns window: %+v", p.ID, pts)
		}
	}
	if code, _ := post(t, base+"/v1/vms/vm/retention", map[string]string{"short_term": "soon"}, nil); code != 400 {
		t.Errorf("bad duration: %d", code)
	}
}

func TestTargetFilterRetentionLoop(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir(), ShortTerm: time.Nanosecond, RetentionInterval: 20 * time.Millisecond})
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(6, 6)), testDisks, 5, wire.CodecNone)
	deadline := time.Now().Add(10 * time.Second)
	for {
		vm, _ := s.Store().VM("vm")
		if len(vm.List()) <= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("retention loop never pruned: %+v", vm.List())
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkPoints(t, s, "vm", m)
}

func TestTargetFilterServeNBD(t *testing.T) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		t.Fatal("qemu-img is required (Debian package qemu-utils, see scripts/test-deps.sh)")
	}
	s := startService(t, Config{JournalDir: t.TempDir()})
	base := "http://" + s.AdminAddr()
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(1, 1)), testDisks, 3, wire.CodecNone)
	var sr ServeResult
	if code, body := post(t, base+"/v1/vms/vm/serve", ServeRequest{Point: 4}, &sr); code != 200 {
		t.Fatalf("serve: %d %s", code, body)
	}
	if len(sr.Exports) != 2 {
		t.Fatalf("exports: %+v", sr)
	}
	for _, e := range sr.Exports {
		out := filepath.Join(t.TempDir(), "img.raw")
		cmd := exec.Command(qemuImg, "convert", "-f", "raw", "-O", "raw", e.URI, out)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("qemu-img convert %s: %v\n%s", e.URI, err, b)
		}
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, m.at[4][e.Disk]) {
			t.Fatalf("served disk %d differs from the model", e.Disk)
		}
		// Writes are refused.
		cmd = exec.Command("qemu-io", "-f", "raw", "-c", "write 0 512", e.URI)
		if b, err := cmd.CombinedOutput(); err == nil && !strings.Contains(string(b), "ermission") && !strings.Contains(string(b), "read-only") && !strings.Contains(string(b), "read only") {
			t.Fatalf("write to a served point succeeded:\n%s", b)
		}
	}
	var again ServeResult
	post(t, base+"/v1/vms/vm/serve", ServeRequest{Point: 4}, &again)
	if again.Exports[0].URI != sr.Exports[0].URI {
		t.Fatal("serving twice made a second export")
	}
	req, _ := http.NewRequest(http.MethodDelete, base+"/v1/vms/vm/serve/4", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("unserve: %v %v", resp, err)
	}
	if code, _ := post(t, base+"/v1/vms/vm/serve", ServeRequest{Point: 1}, nil); code != 404 {
		t.Fatalf("serving an unlisted point: %d", code)
	}
}

func TestTargetFilterRetentionSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s1, err := New(Config{JournalDir: dir, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s1.Run(t.Context()) }()
	dialService(t, s1, "vm", testDisks)
	if code, body := post(t, "http://"+s1.AdminAddr()+"/v1/vms/vm/retention", map[string]string{"short_term": "2h", "long_term": "336h"}, nil); code != 200 {
		t.Fatalf("retention: %d %s", code, body)
	}
	s1.Close()
	<-done
	s2 := startService(t, Config{JournalDir: dir, ShortTerm: time.Hour})
	var vms []VMInfo
	getJSON(t, "http://"+s2.AdminAddr()+"/v1/vms", &vms)
	if len(vms) != 1 || vms[0].Retention.ShortTerm.D() != 2*time.Hour || vms[0].Retention.LongTerm.D() != 336*time.Hour {
		t.Fatalf("retention after restart: %+v", vms)
	}
	bad := t.TempDir()
	if err := os.WriteFile(filepath.Join(bad, retentionFileName), []byte("{bad"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{JournalDir: bad, ListenAddr: "127.0.0.1:0"})
	if err == nil || !strings.Contains(err.Error(), "retention") {
		t.Fatalf("a corrupt retention file was not reported: %v", err)
	}
}

func TestTargetFilterRetentionWaitsForServedPoints(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir(), RetentionInterval: 20 * time.Millisecond})
	base := "http://" + s.AdminAddr()
	pc, _ := dialService(t, s, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(14, 14)), testDisks, 4, wire.CodecNone)
	if code, body := post(t, base+"/v1/vms/vm/serve", ServeRequest{Point: 3}, nil); code != 200 {
		t.Fatalf("serve: %d %s", code, body)
	}
	if code, body := post(t, base+"/v1/vms/vm/retention", map[string]string{"short_term": "1ns", "long_term": "0s"}, nil); code != 200 {
		t.Fatalf("retention: %d %s", code, body)
	}
	time.Sleep(200 * time.Millisecond) // several loop passes
	vm, _ := s.Store().VM("vm")
	if len(vm.List()) != 5 {
		t.Fatalf("retention ran under a served point: %+v", vm.List())
	}
	if got := readImage(t, s, "vm", 3, 2000); !bytes.Equal(got, m.at[3][2000]) {
		t.Fatal("served point changed")
	}
	req, _ := http.NewRequest(http.MethodDelete, base+"/v1/vms/vm/serve/3", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	deadline := time.Now().Add(10 * time.Second)
	for len(vm.List()) > 2 {
		if time.Now().After(deadline) {
			t.Fatalf("retention did not resume after unserve: %+v", vm.List())
		}
		time.Sleep(20 * time.Millisecond)
	}
	checkPoints(t, s, "vm", m)
}

// TestTargetFilterSetRetention: windows from the configuration apply at
// once to an existing VM, wait for a VM that has no journal yet, survive a
// restart, and bad windows change nothing.
func TestTargetFilterSetRetention(t *testing.T) {
	dir := t.TempDir()
	s1, err := New(Config{JournalDir: dir, ListenAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s1.Run(t.Context()) }()
	pc, _ := dialService(t, s1, "vm", testDisks)
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(21, 21)), testDisks, 5, wire.CodecNone)
	vm, _ := s1.Store().VM("vm")
	if n := len(vm.List()); n != 6 {
		t.Fatalf("%d points before retention", n)
	}
	if err := s1.SetRetention(map[string]Retention{"vm": {ShortTerm: time.Nanosecond}, "later": {ShortTerm: time.Hour, LongTerm: 48 * time.Hour}}); err != nil {
		t.Fatal(err)
	}
	if n := len(vm.List()); n > 2 {
		t.Fatalf("%d points left after a 1ns short-term window was set", n)
	}
	checkPoints(t, s1, "vm", m)
	for _, bad := range []map[string]Retention{{"vm": {ShortTerm: -time.Second}}, {"": {ShortTerm: time.Second}}} {
		if err := s1.SetRetention(bad); err == nil {
			t.Fatalf("%v accepted", bad)
		}
	}
	if rt := s1.retentionOf("vm"); rt != (Retention{ShortTerm: time.Nanosecond}) {
		t.Fatalf("a refused window changed the setting: %+v", rt)
	}
	s1.Close()
	<-done
	s2 := startService(t, Config{JournalDir: dir})
	dialService(t, s2, "later", testDisks)
	var vms []VMInfo
	getJSON(t, "http://"+s2.AdminAddr()+"/v1/vms", &vms)
	if len(vms) != 2 || vms[0].VM != "later" || vms[0].Retention.ShortTerm.D() != time.Hour || vms[0].Retention.LongTerm.D() != 48*time.Hour {
		t.Fatalf("windows after restart: %+v", vms)
	}
}

// TestTargetFilterSetVMs: once configured, only VMs whose replica is on
// this host open sessions; one dropped from the configuration loses its
// session and keeps its journal.
func TestTargetFilterSetVMs(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	s.SetVMs([]string{"a"})
	if _, ack := dialService(t, s, "b", testDisks); ack.Err == "" {
		t.Fatal("a vm without a replica here was accepted")
	}
	if _, ok := s.Store().VM("b"); ok {
		t.Fatal("a refused vm got a journal")
	}
	pc, ack := dialService(t, s, "a", testDisks)
	if ack.Err != "" {
		t.Fatalf("configured vm refused: %s", ack.Err)
	}
	sendWorkload(t, pc, rand.New(rand.NewPCG(31, 31)), testDisks, 1, wire.CodecNone)
	s.SetVMs(nil)
	if _, err := pc.next(5 * time.Second); err == nil {
		t.Fatal("the session of a vm dropped from the configuration went on")
	}
	if _, ack := dialService(t, s, "a", testDisks); ack.Err == "" {
		t.Fatal("a vm dropped from the configuration was accepted again")
	}
	if v, ok := s.Store().VM("a"); !ok || v.LastID() != 3 {
		t.Fatal("the dropped vm's journal is gone")
	}
}

func del(t *testing.T, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodDelete, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestTargetFilterRemoveVM: a replica's journal can be purged once the VM
// left the configuration, its session ended and nothing of it is served;
// replicating it again afterwards starts from scratch.
func TestTargetFilterRemoveVM(t *testing.T) {
	s := startService(t, Config{JournalDir: t.TempDir()})
	base := "http://" + s.AdminAddr()
	s.SetVMs([]string{"a"})
	if err := s.SetRetention(map[string]Retention{"a": {ShortTerm: time.Hour, LongTerm: 48 * time.Hour}}); err != nil {
		t.Fatal(err)
	}
	saved := func() string {
		b, _ := os.ReadFile(filepath.Join(s.cfg.JournalDir, retentionFileName))
		return string(b)
	}
	if !strings.Contains(saved(), `"a"`) {
		t.Fatalf("retention window not saved: %s", saved())
	}
	pc, _ := dialService(t, s, "a", testDisks)
	sendWorkload(t, pc, rand.New(rand.NewPCG(41, 41)), testDisks, 3, wire.CodecNone)
	if code, body := post(t, base+"/v1/vms/a/serve", ServeRequest{Point: 4}, nil); code != 200 {
		t.Fatalf("serve: %d %s", code, body)
	}
	if code, body := del(t, base+"/v1/vms/a"); code != http.StatusConflict || !strings.Contains(body, "configuration") {
		t.Fatalf("purge of a configured vm: %d %s", code, body)
	}
	if code, _ := del(t, base+"/v1/vms/nope"); code != http.StatusNotFound {
		t.Fatalf("purge of an unknown vm: %d", code)
	}
	s.SetVMs([]string{})
	// the session ends (SetVMs closes it); then the served point holds it
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := del(t, base+"/v1/vms/a")
		if code == http.StatusConflict && strings.Contains(body, "served") {
			break
		}
		if code != http.StatusConflict || !strings.Contains(body, "replicating") || time.Now().After(deadline) {
			t.Fatalf("purge while a point is served: %d %s", code, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if v, ok := s.Store().VM("a"); !ok || v.LastID() != 5 {
		t.Fatal("a refused purge changed the journal")
	}
	if code, body := del(t, base+"/v1/vms/a/serve/4"); code != http.StatusNoContent {
		t.Fatalf("unserve: %d %s", code, body)
	}
	c, err := NewClient(base, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveVM(context.Background(), "a"); err != nil {
		t.Fatalf("purge: %v", err)
	}
	var vms []VMInfo
	getJSON(t, base+"/v1/vms", &vms)
	if len(vms) != 0 {
		t.Fatalf("vms after the purge: %+v", vms)
	}
	if strings.Contains(saved(), `"a"`) {
		t.Fatalf("the purged vm's retention window is still saved: %s", saved())
	}
	if code := getJSON(t, base+"/v1/vms/a/points", nil); code != http.StatusNotFound {
		t.Fatalf("points of a purged vm: %d", code)
	}
	// replicated again: a fresh replica that needs its initial sync
	s.SetVMs([]string{"a"})
	pc, ack := dialService(t, s, "a", testDisks)
	if ack.Err != "" || ack.Resume != 0 || ack.InitialSyncDone {
		t.Fatalf("hello after the purge: %+v", ack)
	}
	m := sendWorkload(t, pc, rand.New(rand.NewPCG(42, 42)), testDisks, 2, wire.CodecNone)
	if pts := checkPoints(t, s, "a", m); len(pts) != 3 {
		t.Fatalf("points after replicating again: %+v", pts)
	}
}
