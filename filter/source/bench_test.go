package source

import (
	"context"
	"testing"
	"time"
)

// BenchmarkDiskWriteAt is the guest write path alone: file write, dirty
// bit, stamp and buffer, with a proxy that acknowledges everything.
func BenchmarkDiskWriteAt(b *testing.B) {
	dir := b.TempDir()
	f := newFakeProxy(&testing.T{}, nil, true, true)
	opts := testOptions(dir, f, []VMConfig{{Name: "vm1", Disks: []DiskConfig{{Key: 0, Capacity: 1 << 30}}}})
	opts.BlockSize = 64 << 10
	opts.BufferBytes = 256 << 20
	svc, err := New(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer svc.Close()
	svc.Start(context.Background())
	for svc.Status()[0].Mode != "syncing" {
		time.Sleep(time.Millisecond)
	}
	d := svc.Disks()[0]
	p := make([]byte, 1<<20)
	for i := range p {
		p[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(p)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.WriteAt(p, int64(i%1000)<<20, false); err != nil {
			b.Fatal(err)
		}
	}
}
