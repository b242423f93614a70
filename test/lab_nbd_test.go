package test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestLabNoWorkloadUserWrites runs the lab's demo with --no-workload: the
// table shows the VMs syncing, the demo disks are the user's, and a write
// of qemu-io to the NBD URI that "vm disks" gives is, byte for byte, all a
// later restore point holds.
func TestLabNoWorkloadUserWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real processes")
	}
	needTools(t, "qemu-io")
	bin := continuumBinary(t)
	dir := filepath.Join(t.TempDir(), "lab")
	lab := startLab(t, bin, dir, "--no-workload")
	cl := labClient(t, dir)
	ctx := context.Background()
	waitDemoSyncing(t, cl, 4*time.Minute)

	// The live table shows every VM syncing, and no workload.
	waitFor(t, "the table shows app-001 syncing", 30*time.Second, func() error {
		out := lab.output()
		for i := len(out) - 1; i >= 0; i-- {
			if f := strings.Fields(out[i]); len(f) > 2 && f[0] == "app-001" {
				if f[1] != "Syncing" || !strings.Contains(out[i], "2s") {
					return fmt.Errorf("table row: %q", out[i])
				}
				return nil
			}
		}
		return fmt.Errorf("no row for app-001 in %d lines", len(out))
	})
	for _, line := range lab.output() {
		if strings.HasPrefix(line, "workload:") {
			t.Fatalf("a workload runs under --no-workload: %q", line)
		}
	}

	disks, err := cl.VMDisks(ctx, "app-001")
	if err != nil {
		t.Fatal(err)
	}
	if len(disks.Disks) == 0 || disks.Disks[0].NBDURI == "" {
		t.Fatalf("vm disks app-001: %+v", disks)
	}
	d := disks.Disks[0]
	const off, n = 1 << 20, 64 << 10
	run(t, "qemu-io", "-f", "raw", "-c", fmt.Sprintf("write -P 0x5a %d %d", off, n), "-c", "flush", d.NBDURI)
	wrote := time.Now()

	var point uint64
	waitFor(t, "a restore point after the write", time.Minute, func() error {
		pts, err := cl.RestorePoints(ctx, "app-001")
		if err != nil {
			return err
		}
		for _, p := range pts {
			if p.Time.After(wrote.Add(time.Second)) {
				point = p.ID
				return nil
			}
		}
		return fmt.Errorf("%d points, none after %s", len(pts), wrote)
	})
	out := filepath.Join(t.TempDir(), "app-001.raw")
	if _, err := cl.ExportRestorePoint(ctx, "app-001", d.Key, point, out); err != nil {
		t.Fatal(err)
	}
	img, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(img)) != d.CapacityBytes {
		t.Fatalf("image of %d bytes, disk of %d", len(img), d.CapacityBytes)
	}
	want := make([]byte, len(img))
	copy(want[off:off+n], bytes.Repeat([]byte{0x5a}, n))
	if !bytes.Equal(img, want) {
		first := -1
		for i := range img {
			if img[i] != want[i] {
				first = i
				break
			}
		}
		t.Fatalf("point %d differs from what qemu-io wrote (and nothing else) from byte %d", point, first)
	}
	lab.stop()
}
