package nbd

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// These tests drive the server with the real Debian NBD clients.

func TestQemuIOPatterns(t *testing.T) {
	needBin(t, "qemu-io")
	ex, fb := fileExport(t, "qio", 8<<20)
	_, addr := startServer(t, nil, ex)
	uri := URI(addr, "qio")
	out := run(t, "qemu-io", "-f", "raw", "-d", "unmap", uri,
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -P 0xcd 1000 3333",
		"-c", "read -P 0xcd 1000 3333",
		"-c", "read -P 0xab 0 1000",
		"-c", "read -P 0xab 4333 10000",
		"-c", "write -P 0x11 4095 65539",
		"-c", "read -P 0x11 4095 65539",
		"-c", "discard 128k 64k",
		"-c", "read -P 0 128k 64k",
		"-c", "write -z 300k 100k",
		"-c", "read -P 0 300k 100k",
		"-c", "write -z -u 500k 12345",
		"-c", "read -P 0 500k 12345",
		"-c", "write -f -P 0x77 7M 1M",
		"-c", "flush",
		"-c", "read -P 0x77 7M 1M",
	)
	if strings.Contains(out, "failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}

	// The backend holds exactly the model's bytes.
	model := make([]byte, 8<<20)
	fill := func(off, n int, b byte) {
		for i := off; i < off+n; i++ {
			model[i] = b
		}
	}
	fill(0, 1<<20, 0xab)
	fill(1000, 3333, 0xcd)
	fill(4095, 65539, 0x11)
	fill(128<<10, 64<<10, 0)
	fill(300<<10, 100<<10, 0)
	fill(500<<10, 12345, 0)
	fill(7<<20, 1<<20, 0x77)
	raw, err := os.ReadFile(fb.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, model) {
		t.Fatal("backend file differs from the expected content")
	}

	// A read-only export is readable, and qemu refuses to open it for
	// writing because of the READ_ONLY flag.
	ro, rb := fileExport(t, "qro", 1<<20)
	if err := rb.WriteAt(bytes.Repeat([]byte{0x42}, 1<<20), 0, false); err != nil {
		t.Fatal(err)
	}
	ro.ReadOnly = true
	_, addr2 := startServer(t, nil, ro)
	out2 := run(t, "qemu-io", "-r", "-f", "raw", URI(addr2, "qro"), "-c", "read -P 0x42 0 1M")
	if strings.Contains(out2, "failed") {
		t.Fatalf("read of a read-only export:\n%s", out2)
	}
	out2, err = runMayFail(t, "qemu-io", "-f", "raw", URI(addr2, "qro"), "-c", "write -P 1 0 4k")
	if err == nil && !strings.Contains(out2, "failed") && !strings.Contains(out2, "denied") {
		t.Fatalf("write to a read-only export did not fail:\n%s", out2)
	}
	first := make([]byte, 4096)
	if _, err := rb.ReadAt(first, 0); err != nil || !bytes.Equal(first, bytes.Repeat([]byte{0x42}, 4096)) {
		t.Fatalf("read-only backend changed (%v)", err)
	}
}

func runMayFail(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	cmd := execCommand(needBin(t, name), args...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// writeImage writes a test image mixing random data, text and zero runs.
func writeImage(t testing.TB, path string, size int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(42, 7))
	img := make([]byte, size)
	for off := 0; off < size; {
		n := min(size-off, 4096+rng.IntN(300<<10))
		switch rng.IntN(3) {
		case 0:
			for i := off; i < off+n; i++ {
				img[i] = byte(rng.Uint32())
			}
		case 1:
			copy(img[off:off+n], bytes.Repeat([]byte("continuous data protection "), n/27+1))
		}
		off += n
	}
	if err := os.WriteFile(path, img, 0o600); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestNbdcopyAndCompare(t *testing.T) {
	needBin(t, "nbdcopy")
	needBin(t, "qemu-img")
	const size = 12 << 20
	src := filepath.Join(t.TempDir(), "src.img")
	img := writeImage(t, src, size)
	ex, fb := fileExport(t, "copy", size)
	// Garbage in the target's zero runs proves that nbdcopy's zeroing works.
	if err := fb.WriteAt(bytes.Repeat([]byte{0xee}, size), 0, false); err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, nil, ex)
	uri := URI(addr, "copy")
	run(t, "nbdcopy", "--connections=2", "--requests=8", src, uri)
	out := run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, uri)
	if !strings.Contains(out, "Images are identical") {
		t.Fatalf("qemu-img compare: %s", out)
	}
	raw, err := os.ReadFile(fb.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, img) {
		t.Fatal("backend file differs from the source image")
	}
	// And back out again through the server.
	back := filepath.Join(t.TempDir(), "back.img")
	run(t, "nbdcopy", uri, back)
	got, err := os.ReadFile(back)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, img) {
		t.Fatal("image copied back differs")
	}
}

func TestFioRandWriteVerify(t *testing.T) {
	needBin(t, "fio")
	ex, _ := fileExport(t, "fio", 16<<20)
	_, addr := startServer(t, nil, ex)
	out := run(t, "fio", "--name=randwrite", "--ioengine=nbd", "--uri="+URI(addr, "fio"),
		"--rw=randwrite", "--bsrange=4k-64k", "--size=16M", "--iodepth=8",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0",
		"--verify_state_save=0", "--directory="+t.TempDir(),
		"--output-format=json")
	var res struct {
		Jobs []struct {
			Error int `json:"error"`
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"write"`
			Read struct {
				IOBytes int64 `json:"io_bytes"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &res); err != nil {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	if len(res.Jobs) != 1 || res.Jobs[0].Error != 0 || res.Jobs[0].Write.IOBytes != 16<<20 || res.Jobs[0].Read.IOBytes == 0 {
		t.Fatalf("fio result %+v\n%s", res, out)
	}
}

func TestNbdinfo(t *testing.T) {
	needBin(t, "nbdinfo")
	a, _ := fileExport(t, "alpha", 3<<20)
	b, _ := fileExport(t, "beta", 5<<20)
	b.ReadOnly = true
	_, addr := startServer(t, nil, a, b)

	out := run(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	var list struct {
		Exports []struct {
			Name        string `json:"export-name"`
			Description string `json:"description"`
			Size        int64  `json:"export-size"`
			ReadOnly    bool   `json:"is_read_only"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	if len(list.Exports) != 2 || list.Exports[0].Name != "alpha" || list.Exports[1].Name != "beta" ||
		list.Exports[0].Size != 3<<20 || list.Exports[1].Size != 5<<20 || !list.Exports[1].ReadOnly ||
		list.Exports[0].Description != "disk alpha" {
		t.Fatalf("nbdinfo --list:\n%s", out)
	}

	out = run(t, "nbdinfo", "--json", URI(addr, "alpha"))
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Size     int64 `json:"export-size"`
			ReadOnly bool  `json:"is_read_only"`
			Trim     bool  `json:"can_trim"`
			Zero     bool  `json:"can_zero"`
			FUA      bool  `json:"can_fua"`
			Flush    bool  `json:"can_flush"`
			Multi    bool  `json:"can_multi_conn"`
			Min      int   `json:"block_size_minimum"`
			Pref     int   `json:"block_size_preferred"`
			Max      int   `json:"block_size_maximum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("nbdinfo: %v\n%s", err, out)
	}
	if len(info.Exports) != 1 {
		t.Fatalf("nbdinfo:\n%s", out)
	}
	e := info.Exports[0]
	if info.Protocol != "newstyle-fixed" || e.Size != 3<<20 || e.ReadOnly || !e.Trim || !e.Zero || !e.FUA || !e.Flush || !e.Multi ||
		e.Min != 1 || e.Pref != 4096 || e.Max != MaxRequest {
		t.Fatalf("nbdinfo:\n%s", out)
	}
}

func TestQemuIOTwoClientsAtOnce(t *testing.T) {
	needBin(t, "qemu-io")
	ex, fb := fileExport(t, "two", 4<<20)
	_, addr := startServer(t, nil, ex)
	var wg sync.WaitGroup
	outs := make([]string, 2)
	errs := make([]error, 2)
	for k := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := k * 2 << 20
			pat := []string{"0x5a", "0xa5"}[k]
			outs[k], errs[k] = runMayFail(t, "qemu-io", "-f", "raw", URI(addr, "two"),
				"-c", "write -P "+pat+" "+itoa(off)+" 2M",
				"-c", "read -P "+pat+" "+itoa(off)+" 2M")
		}()
	}
	wg.Wait()
	for k := range 2 {
		if errs[k] != nil || strings.Contains(outs[k], "failed") {
			t.Fatalf("client %d: %v\n%s", k, errs[k], outs[k])
		}
	}
	raw, err := os.ReadFile(fb.Path())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw[:2<<20], bytes.Repeat([]byte{0x5a}, 2<<20)) || !bytes.Equal(raw[2<<20:], bytes.Repeat([]byte{0xa5}, 2<<20)) {
		t.Fatal("backend content differs")
	}
}
