package test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDatapathNBDClients writes through the source filter's NBD exports
// with qemu-io patterns, nbdcopy of an image and fio randwrite with
// verify; the latest restore point of every disk must compare equal to the
// source disk.
func TestDatapathNBDClients(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img", "nbdcopy", "fio")
	d := startDatapath(t, dpOptions{encrypt: true, grace: 5 * time.Second})

	// qemu-io: patterns at unaligned offsets, overwrites, zeroes, discard
	run(t, "qemu-io", "-f", "raw",
		"-c", "write -P 0xab 0 1M",
		"-c", "write -P 0xcd 4097 70001",
		"-c", "write -z 1048576 65536",
		"-c", "discard 2M 128k",
		"-c", "write -P 0x11 3M 513",
		"-c", "flush",
		"-c", "read -P 0xcd 4097 70001",
		d.uri("vm-a", 2000))
	// nbdcopy an image onto a disk
	img := filepath.Join(d.dir, "image.raw")
	b := make([]byte, 8<<20)
	r := rand.New(rand.NewPCG(3, 4))
	for i := 0; i < len(b); i += 4096 {
		if r.IntN(3) == 0 {
			fillRandom(r, b[i:i+4096])
		}
	}
	if err := os.WriteFile(img, b, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", img, d.uri("vm-b", 2000))
	// fio randwrite with verify
	run(t, "fio", "--name=w", "--ioengine=nbd", "--uri="+d.uri("vm-a", 2001), "--rw=randwrite",
		"--bs=4k-64k", "--size=16M", "--iodepth=8", "--verify=crc32c", "--do_verify=1", "--verify_state_save=0")

	d.waitQuiet(90 * time.Second)
	d.checkLatest()
	// the copied image is the start of vm-b's disk
	pts := d.points("vm-b")
	got := d.export("vm-b", 2000, pts[len(pts)-1].ID)
	f, err := os.Open(got)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	head := make([]byte, len(b))
	if _, err := io.ReadFull(f, head); err != nil {
		t.Fatal(err)
	}
	if string(head) != string(b) {
		t.Fatalf("restored vm-b disk does not start with the copied image")
	}
}

// TestDatapathCrash kills the target filter, the target proxy and the
// source proxy with SIGKILL at random moments of a running workload, the
// source proxy long enough for CBT mode; every point listed before a kill
// must restore to the same bytes afterwards, and the latest point equal
// the source disks. With encryption on and off.
func TestDatapathCrash(t *testing.T) {
	needTools(t, "qemu-img", "fio")
	// encrypted points also cross integrity frames between the hosts and
	// the proxies; clear points cross TLS on every hop
	for _, enc := range []bool{false, true} {
		t.Run(fmt.Sprintf("encrypt=%v", enc), func(t *testing.T) {
			crashRun(t, enc, enc)
		})
	}
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

func crashRun(t *testing.T, encrypt, hostIntegrity bool) {
	grace := 1500 * time.Millisecond
	d := startDatapath(t, dpOptions{encrypt: encrypt, grace: grace, hostIntegrity: hostIntegrity})
	link := "tls"
	if hostIntegrity {
		link = "integrity"
	}
	d.checkLinks(link)
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 5))

	// background workload on every disk until stopped
	stop := make(chan struct{})
	done := make(chan error, 3)
	for vm, disks := range d.vms {
		for _, k := range disks {
			go func() {
				for {
					select {
					case <-stop:
						done <- nil
						return
					default:
					}
					cmd := exec.Command("fio", "--name=w", "--ioengine=nbd", "--uri="+d.uri(vm, k), "--rw=randwrite",
						"--bs=4k-128k", "--size=8M", "--offset=4M", "--iodepth=4", "--rate=4m", "--time_based", "--runtime=1")
					if out, err := cmd.CombinedOutput(); err != nil {
						done <- fmt.Errorf("fio on %s/%d: %v\n%s", vm, k, err, out)
						return
					}
				}
			}()
		}
	}
	nWorkers := 3

	// remember what listed points restore to, then check them after each kill
	type snap struct {
		vm   string
		disk int32
		id   uint64
		sum  string
	}
	var snaps []snap
	remember := func() {
		for vm, disks := range d.vms {
			pts := d.points(vm)
			if len(pts) == 0 {
				continue
			}
			id := pts[len(pts)-1].ID
			for _, k := range disks {
				p := d.export(vm, k, id)
				snaps = append(snaps, snap{vm, k, id, fileSum(t, p)})
				os.Remove(p)
			}
		}
	}
	verify := func(when string) {
		for _, s := range snaps {
			p := d.export(s.vm, s.disk, s.id)
			if got := fileSum(t, p); got != s.sum {
				t.Fatalf("%s: point %d of %s disk %d restores differently", when, s.id, s.vm, s.disk)
			}
			os.Remove(p)
		}
	}
	pause := func() { time.Sleep(time.Duration(200+r.IntN(800)) * time.Millisecond) }

	pause()
	remember()
	d.tfilter.restart()
	verify("after killing the target filter")
	pause()
	d.tproxy.restart()
	pause()
	remember()
	d.sproxy.kill()
	// long enough for CBT mode
	deadline := time.Now().Add(grace + 10*time.Second)
	sawCBT := false
	for time.Now().Before(deadline) && !sawCBT {
		for _, s := range d.status() {
			if s.Mode == "cbt" && s.Status == "CBT mode" {
				sawCBT = true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !sawCBT {
		t.Errorf("no VM entered CBT mode while the source proxy was down")
	}
	d.sproxy.start()
	pause()
	d.tfilter.restart()
	verify("after killing the target filter again")
	pause()
	close(stop)
	for i := 0; i < nWorkers; i++ {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	st := d.waitQuiet(120 * time.Second)
	cbt := int64(0)
	for _, s := range st {
		cbt += s.CBTEntries
	}
	if cbt == 0 {
		t.Errorf("CBT mode was never entered")
	}
	verify("at the end")
	d.checkLatest()
	d.checkLinks(link) // the sessions after the kills chose the same
}

// TestDatapathSourceFilterCrash kills the source filter right after guest
// writes it has not yet delivered: the restarted filter resyncs the blocks
// its dirty bitmap names, and the latest point equals the source disks.
func TestDatapathSourceFilterCrash(t *testing.T) {
	needTools(t, "qemu-io", "qemu-img")
	d := startDatapath(t, dpOptions{grace: 5 * time.Second, rpo: 2 * time.Second})
	for round := 0; round < 2; round++ {
		for vm, disks := range d.vms {
			for _, k := range disks {
				run(t, "qemu-io", "-f", "raw",
					"-c", fmt.Sprintf("write -P 0x%x %d 300000", 0x30+round, 1<<20+round*777),
					"-c", fmt.Sprintf("write -z %d 65536", 5<<20),
					"-c", fmt.Sprintf("write -P 0x5a %d 4096", 9<<20+round*4096),
					d.uri(vm, k))
			}
		}
		// the RPO is 2s: these writes are not acknowledged yet
		d.sfilter.restart()
		st := d.waitQuiet(90 * time.Second)
		for _, s := range st {
			if s.Seq == 0 {
				t.Fatalf("%s: sequence restarted from zero", s.VM)
			}
		}
		d.checkLatest()
		b, _ := os.ReadFile(d.sfilter.log)
		if n := strings.Count(string(b), `msg="sync scan started" role=source-filter vm=vm-a mode=resync`); n < round+1 {
			t.Fatalf("round %d: %d resyncs of vm-a after restarts, want %d", round, n, round+1)
		}
	}
}
