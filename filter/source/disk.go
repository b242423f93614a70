package source

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/directio"
	"github.com/continuum-cdp/continuum/internal/wire"
)

// Disk is one protected disk: its flat file and the NBD backend that
// writes it and stamps every change into the VM's stream.
//
// Writes aligned to directio.Align go to the file with direct I/O where
// the file system offers it, as a hypervisor writes a virtual disk: no copy
// into the page cache, no writeback later. Other writes, reads and scans
// use the page cache. Mixing the two is safe because no two writes touch
// the same page at once: writes lock whole CBT blocks, and direct I/O is
// only used when a block is a whole number of pages.
type Disk struct {
	vm       *vmState
	key      int32
	capacity int64
	path     string
	f        *os.File
	df       atomic.Pointer[os.File] // direct writer, or nil
	dfile    *os.File                // the direct writer, closed with the disk
	directs  atomic.Int64            // writes that went direct (tests)
	locks    *rangeLock
	dirty    *dirtyMap // guarded by vm.mu

	// initial-sync progress, guarded by vm.mu
	scanDone int64
}

// ErrOutOfRange is returned for requests beyond the disk's capacity; the NBD
// server maps it to EINVAL.
var ErrOutOfRange = nbd.ErrOutOfRange

// DiskFileName is the flat file name of the disk at index i of a VM.
func DiskFileName(vm string, i int) string {
	if i == 0 {
		return vm + "-flat.vmdk"
	}
	return fmt.Sprintf("%s_%d-flat.vmdk", vm, i)
}

func openDisk(v *vmState, dir string, i int, c DiskConfig, blockSize int64) (*Disk, error) {
	path := c.File
	if path == "" {
		path = filepath.Join(dir, DiskFileName(v.name, i))
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open disk %d of %s: %w", c.Key, v.name, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("stat disk %s: %w", path, err)
	}
	hadData := st.Size() > 0
	switch {
	case st.Size() > c.Capacity:
		f.Close()
		return nil, fmt.Errorf("disk %s is %d bytes, larger than its capacity %d", path, st.Size(), c.Capacity)
	case st.Size() < c.Capacity:
		// grow sparse: the new tail reads as zeroes
		if err := f.Truncate(c.Capacity); err != nil {
			f.Close()
			return nil, fmt.Errorf("size disk %s: %w", path, err)
		}
	}
	dm, err := openDirtyMap(filepath.Join(dir, fmt.Sprintf(".%s-%d.dirty", v.name, c.Key)), c.Capacity, blockSize, hadData)
	if err != nil {
		f.Close()
		return nil, err
	}
	d := &Disk{vm: v, key: c.Key, capacity: c.Capacity, path: path, f: f, locks: newRangeLock(), dirty: dm}
	if !v.opts.BufferedIO && blockSize%directio.Align == 0 {
		if d.dfile = directio.Open(path); d.dfile != nil {
			d.df.Store(d.dfile)
		}
	}
	return d, nil
}

var _ nbd.Backend = (*Disk)(nil)

// Key is the disk's key within its VM.
func (d *Disk) Key() int32 { return d.key }

// Path is the disk's flat file.
func (d *Disk) Path() string { return d.path }

// VM is the name of the disk's VM.
func (d *Disk) VM() string { return d.vm.name }

// ExportName is the NBD export name of the disk: "<vm>/<key>".
func (d *Disk) ExportName() string { return fmt.Sprintf("%s/%d", d.vm.name, d.key) }

// Size is the disk's capacity in bytes.
func (d *Disk) Size() int64 { return d.capacity }

func (d *Disk) check(off, length int64) error {
	if off < 0 || length < 0 || off+length > d.capacity || off+length < off {
		return fmt.Errorf("disk %s at %d+%d: %w", d.ExportName(), off, length, ErrOutOfRange)
	}
	return nil
}

// lockBlocks takes the CBT blocks covering [off, off+length): the dirty
// bit, the file and the stamp of one block change together.
func (d *Disk) lockBlocks(off, length int64) span {
	bs := d.vm.opts.BlockSize
	return d.locks.Lock(off/bs*bs, (off+length+bs-1)/bs*bs)
}

// ReadAt reads from the flat file.
func (d *Disk) ReadAt(p []byte, off int64) (int, error) {
	if err := d.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		return n, fmt.Errorf("read disk %s at %d: %w", d.ExportName(), off, err)
	}
	return n, nil
}

// WriteAt writes to the file and queues the write for the proxy.
func (d *Disk) WriteAt(p []byte, off int64, fua bool) error {
	return d.write(p, off, fua, false)
}

// WriteBuffer returns a buffer for a write of n bytes to hand to
// WriteOwned.
func (d *Disk) WriteBuffer(n int) []byte { return newData(n) }

// WriteOwned is WriteAt for a buffer of WriteBuffer's that the disk keeps,
// whatever the outcome: the stream toward the proxy sends it as it is,
// without the copy WriteAt makes, and frees it once it is acknowledged.
// The caller must not touch p again.
func (d *Disk) WriteOwned(p []byte, off int64, fua bool) error {
	return d.write(p, off, fua, true)
}

func (d *Disk) write(p []byte, off int64, fua, owned bool) error {
	if err := d.check(off, int64(len(p))); err != nil {
		if owned {
			putData(p)
		}
		return err
	}
	if len(p) == 0 {
		return nil
	}
	s := d.lockBlocks(off, int64(len(p)))
	err := d.vm.change(d, wire.OpData, off, int64(len(p)), p, owned, func() error {
		return d.writeFile(p, off)
	})
	d.locks.Unlock(s)
	if err != nil {
		return fmt.Errorf("write disk %s at %d: %w", d.ExportName(), off, err)
	}
	if fua {
		return d.Flush()
	}
	return nil
}

// WriteZeroes makes the range read as zeroes.
func (d *Disk) WriteZeroes(off, length int64, fua bool) error {
	if err := d.zero(off, length); err != nil {
		return err
	}
	if fua {
		return d.Flush()
	}
	return nil
}

// Trim is treated as "reads return zeroes", the way the export advertises it.
func (d *Disk) Trim(off, length int64) error { return d.zero(off, length) }

func (d *Disk) zero(off, length int64) error {
	if err := d.check(off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	s := d.lockBlocks(off, length)
	err := d.vm.change(d, wire.OpZero, off, length, nil, false, func() error {
		return punch(d.f, off, length)
	})
	d.locks.Unlock(s)
	if err != nil {
		return fmt.Errorf("zero disk %s at %d+%d: %w", d.ExportName(), off, length, err)
	}
	return nil
}

// punch deallocates a range (it reads back as zeroes), writing zeroes when
// the file system cannot punch holes.
func punch(f *os.File, off, length int64) error {
	const punchHole, keepSize = 0x02, 0x01
	err := syscall.Fallocate(int(f.Fd()), punchHole|keepSize, off, length)
	if err == nil {
		return nil
	}
	if !errors.Is(err, syscall.EOPNOTSUPP) {
		return err
	}
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Flush makes the dirty bits and then the file durable: after a guest
// flush, a crash of the host still knows every block that may not have
// reached the target.
func (d *Disk) Flush() error {
	if err := d.vm.syncDirty(d); err != nil {
		return fmt.Errorf("flush disk %s: %w", d.ExportName(), err)
	}
	if err := d.f.Sync(); err != nil {
		return fmt.Errorf("flush disk %s: %w", d.ExportName(), err)
	}
	return nil
}

// writeFile writes p at off: directly when it is aligned and the file
// system allows it, else through the page cache. The caller holds the
// blocks of the range.
func (d *Disk) writeFile(p []byte, off int64) error {
	if df := d.df.Load(); df != nil && directio.Fits(p, off) {
		_, err := df.WriteAt(p, off)
		if !errors.Is(err, syscall.EINVAL) {
			d.directs.Add(1)
			return err
		}
		// the file system refused this write after all: buffered from
		// now on (a failed direct write changed nothing)
		if d.df.Swap(nil) != nil {
			d.vm.log.Warn("direct writes refused, using the page cache", "disk", d.path, "err", err.Error())
		}
	}
	_, err := d.f.WriteAt(p, off)
	return err
}

func (d *Disk) close() error {
	if d.dfile != nil {
		d.dfile.Close()
	}
	err1 := d.f.Close()
	err2 := d.dirty.close()
	return errors.Join(err1, err2)
}
