package test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/continuum-cdp/continuum/filter/source"
)

// TestDatapathTargetFull fills the target datastore (the target filter's
// journal has a byte cap, failing like ENOSPC): the target filter counts
// the failed appends, acknowledgements stop while the guest keeps
// writing, the source filter falls back to CBT mode, and once the
// datastore has room again (the target filter restarts with a larger cap)
// the source resyncs and leaves CBT mode. The latest point equals the
// source disk and every point listed before the fill restores to the same
// bytes as before.
func TestDatapathTargetFull(t *testing.T) {
	for _, tool := range []string{"qemu-io", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "" {
				t.Skipf("%s is not installed (scripts/test-deps.sh installs it)", tool)
			}
			t.Fatalf("%s is not installed: %v", tool, err)
		}
	}
	const (
		diskBytes = 128 << 20
		// one preallocated 64 MiB journal segment fits, the next does not
		journalCap = 64<<20 + 1<<20
		chunk      = 4 << 20
	)
	// a negative cap is refused before anything is created
	bad := filepath.Join(t.TempDir(), "journal")
	out, err := exec.Command(continuumBinary(t), "filter", "--role", "target", "--plaintext", "--listen", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--nbd-addr", "127.0.0.1:0", "--journal-dir", bad, "--journal-max-bytes", "-1").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--journal-max-bytes must not be negative") {
		t.Fatalf("negative --journal-max-bytes: %v\n%s", err, out)
	}
	if _, err := os.Stat(bad); !os.IsNotExist(err) {
		t.Fatalf("negative --journal-max-bytes created %s: %v", bad, err)
	}
	grace := 2 * time.Second
	vms := []source.VMConfig{{Name: "vm-a", Disks: []source.DiskConfig{{Key: 2000, Capacity: diskBytes}}}}
	d := startDatapath(t, dpOptions{grace: grace, vms: vms, noSourceFilter: true, logLevel: "info"})

	// the journal is still empty: give the target filter its cap
	d.tfilter.args = append(d.tfilter.args, "--journal-max-bytes", strconv.Itoa(journalCap))
	d.tfilter.restart()

	tlsArgs := []string{"--cert", filepath.Join(d.certs, "cert.pem"), "--key", filepath.Join(d.certs, "key.pem"), "--ca", filepath.Join(d.certs, "ca.pem")}
	cfg := map[string]any{
		"role": "source", "datastore": filepath.Join(d.dir, "source"), "proxy": d.spData,
		"admin_addr": d.sfAdmin, "nbd_addr": d.nbdAddr, "grace": grace.String(), "buffer_bytes": 8 << 20,
		"vms": vms,
	}
	b, _ := json.Marshal(cfg)
	cfgPath := filepath.Join(d.dir, "source-filter.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		t.Fatal(err)
	}
	d.sfilter = startProc(t, d.dir, "source-filter", d.sfAdmin, append([]string{"filter", "--config", cfgPath}, tlsArgs...)...)
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range []*proc{d.sfilter, d.sproxy, d.tproxy, d.tfilter} {
				t.Logf("%s log:\n%s", p.name, tail(p.log))
			}
		}
	})
	d.waitQuiet(60 * time.Second)

	// random data so nothing along the way can shrink it
	r := rand.New(rand.NewPCG(11, 12))
	src := filepath.Join(d.dir, "chunk.raw")
	buf := make([]byte, chunk)
	fillRandom(r, buf)
	if err := os.WriteFile(src, buf, 0o644); err != nil {
		t.Fatal(err)
	}
	uri := d.uri("vm-a", 2000)
	write := func(off int64) {
		t.Helper()
		run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -s %s %d %d", src, off, chunk), uri)
	}

	// a few points before the datastore fills, remembered by their bytes
	write(0)
	d.waitQuiet(60 * time.Second)
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5c 4097 70001", uri)
	d.waitQuiet(60 * time.Second)
	before := map[uint64]string{}
	for _, p := range d.points("vm-a") {
		path := d.export("vm-a", 2000, p.ID)
		before[p.ID] = fileSum(t, path)
		os.Remove(path)
	}
	if len(before) < 2 {
		t.Fatalf("want at least 2 listed points before the fill, got %d", len(before))
	}
	if n := appendErrors(t, d.tfAdmin); n != 0 {
		t.Fatalf("%v append errors before the datastore is full", n)
	}

	// write until the journal is full: after each write the path either
	// catches up or the target filter reports failed appends
	off := int64(chunk)
	deadline := time.Now().Add(60 * time.Second)
	var st filterStatus
	for full := false; !full; {
		if off+chunk > diskBytes || time.Now().After(deadline) {
			t.Fatalf("journal not full after writing %d bytes: %+v", off, st)
		}
		write(off)
		off += chunk
		for settle := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if appendErrors(t, d.tfAdmin) > 0 {
				full = true
				break
			}
			st = d.status()[0]
			if st.Mode == "syncing" && st.Acked == st.Seq && st.BufferEntries == 0 {
				break
			}
			if time.Now().After(settle) {
				t.Fatalf("neither caught up nor full after 30s: %+v", st)
			}
		}
	}
	// let whatever was appended before the failure be acknowledged
	time.Sleep(time.Second)
	st = d.status()[0]
	acked := st.Acked
	pointsFull := len(d.points("vm-a"))

	// acknowledgements have stopped: the guest keeps writing, the acked
	// position stays, and the buffer overflows into CBT mode
	sawCBT := false
	for deadline := time.Now().Add(60 * time.Second); !sawCBT; {
		if off+chunk > diskBytes || time.Now().After(deadline) {
			t.Fatalf("no CBT mode after writing %d bytes: %+v", off, st)
		}
		write(off)
		off += chunk
		time.Sleep(200 * time.Millisecond)
		st = d.status()[0]
		if st.Acked != acked {
			t.Fatalf("acknowledged sequence moved from %d to %d while the datastore is full", acked, st.Acked)
		}
		sawCBT = st.Mode == "cbt" && st.Status == "CBT mode"
	}
	if acked >= st.Seq {
		t.Fatalf("every stamped write acknowledged (acked %d, seq %d) although the datastore is full", acked, st.Seq)
	}
	// CBT mode holds while the datastore stays full: resync attempts fail
	// like the writes before them
	time.Sleep(2 * time.Second)
	if now := d.status()[0]; now.Status != "CBT mode" || now.Acked != acked {
		t.Fatalf("while the datastore is full: %+v, want CBT mode at acked %d", now, acked)
	}
	if n := len(d.points("vm-a")); n != pointsFull {
		t.Fatalf("listed points went from %d to %d while the datastore is full", pointsFull, n)
	}
	if n := appendErrors(t, d.tfAdmin); n == 0 {
		t.Fatalf("the target filter reported no append errors")
	}
	if acked >= st.Seq {
		t.Fatalf("every stamped write acknowledged (acked %d, seq %d) although the datastore is full", acked, st.Seq)
	}
	run(t, "qemu-io", "-f", "raw", "-c", "write -P 0xe7 1000 3333", uri)

	// the operator frees space: the target filter comes back with room
	for i, a := range d.tfilter.args {
		if a == "--journal-max-bytes" {
			d.tfilter.args[i+1] = strconv.Itoa(1 << 30)
		}
	}
	d.tfilter.restart()
	final := d.waitQuiet(60 * time.Second)
	if final[0].Status != "Syncing" || final[0].CBTEntries == 0 {
		t.Fatalf("after the datastore has room: %+v, want Syncing after a CBT period", final[0])
	}
	d.checkLatest()
	for id, sum := range before {
		path := d.export("vm-a", 2000, id)
		if got := fileSum(t, path); got != sum {
			t.Fatalf("point %d restores differently after the datastore was full", id)
		}
		os.Remove(path)
	}
}

// appendErrors sums continuum_target_filter_append_errors_total over its
// labels from the target filter's /metrics.
func appendErrors(t *testing.T, admin string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("target filter metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "continuum_target_filter_append_errors_total") {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read target filter metrics: %v", err)
	}
	return sum
}
