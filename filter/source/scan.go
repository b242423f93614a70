package source

import (
	"bytes"
	"time"

	"github.com/continuum-cdp/continuum/internal/wire"
)

// startScanLocked starts the initial sync (every block of every disk) or a
// resync (the dirty blocks), superseding any running scan.
func (v *vmState) startScanLocked(mode Mode) {
	v.scanGen++
	gen := v.scanGen
	v.mode = mode
	v.scanning = true
	v.rescan = false
	v.scanStart = time.Now()
	v.scanBytes = 0
	v.scanTotal = 0
	// the plan holds its disks: a disk added meanwhile waits for the next scan
	plan := make([]diskPlan, 0, len(v.disks))
	if mode == ModeInitial {
		v.addedSync = false
		v.reason = "reading every block of the disks"
		for _, d := range v.disks {
			d.scanDone = 0
			plan = append(plan, diskPlan{d, []span{{0, d.capacity}}})
			v.scanTotal += d.capacity
		}
	} else {
		if !v.addedSync {
			v.reason = "resending the blocks changed while the path was down"
		}
		if _, err := v.markerLocked(wire.MarkerResyncStart); err != nil {
			v.log.Error("resync start marker", "err", err)
			v.scanning = false
			return
		}
		for _, d := range v.disks {
			runs := d.dirty.dirtyRuns(d.capacity, v.opts.ScanChunk)
			for _, r := range runs {
				v.scanTotal += r.end - r.off
			}
			plan = append(plan, diskPlan{d, runs})
		}
	}
	v.log.Info("sync scan started", "mode", mode.String(), "bytes", v.scanTotal)
	v.scanWG.Add(1)
	go func() { defer v.scanWG.Done(); v.scan(gen, mode, plan) }()
}

// diskPlan is what a scan reads of one disk.
type diskPlan struct {
	d     *Disk
	spans []span
}

// scan reads the planned ranges chunk by chunk. Each chunk is read under its
// block lock and stamped before the lock is released, so a guest write of
// the same blocks is ordered before or after it, never interleaved.
func (v *vmState) scan(gen int, mode Mode, plan []diskPlan) {
	flags := wire.FlagInitial
	if mode == ModeResync {
		flags = wire.FlagResync
	}
	chunk := v.opts.ScanChunk
	buf := make([]byte, chunk)
	zero := make([]byte, chunk)
	for _, p := range plan {
		d := p.d
		for _, r := range p.spans {
			for off := r.off; off < r.end; off += chunk {
				n := min(chunk, r.end-off)
				if !v.waitRoom(gen, entryOverhead+n) {
					return
				}
				s := d.lockBlocks(off, n)
				// a chunk in a hole of the file is zeroes without reading
				// it (the block lock keeps guest writes out meanwhile)
				var err error
				hole := false
				if at, ok := nextData(d.f, off); ok && at >= off+n {
					hole = true
				} else {
					_, err = d.f.ReadAt(buf[:n], off)
				}
				if err != nil {
					d.locks.Unlock(s)
					v.scanFailed(gen, d, err)
					return
				}
				v.mu.Lock()
				if v.scanGen != gen {
					v.mu.Unlock()
					d.locks.Unlock(s)
					return
				}
				// an all-zero chunk travels as a zero range (sparse disks)
				if hole || bytes.Equal(buf[:n], zero[:n]) {
					err = v.stampLocked(d, wire.OpZero, off, n, nil, flags, false)
				} else {
					err = v.stampLocked(d, wire.OpData, off, n, buf[:n], flags, false)
				}
				if mode == ModeInitial {
					d.scanDone = off + n - r.off
				}
				v.scanBytes += n
				v.mu.Unlock()
				d.locks.Unlock(s)
				if err != nil {
					v.scanFailed(gen, d, err)
					return
				}
			}
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.scanGen != gen {
		return
	}
	kinds := []uint8{wire.MarkerResyncDone}
	if mode == ModeInitial {
		kinds = []uint8{wire.MarkerInitialSyncDone}
	}
	for _, k := range kinds {
		seq, err := v.markerLocked(k)
		if err != nil {
			v.log.Error("sync scan marker", "err", err)
			v.scanning = false
			return
		}
		if k == wire.MarkerInitialSyncDone {
			v.initMarkerSeq = seq
		}
	}
	v.scanning = false
	v.mode, v.reason = ModeSyncing, ""
	if !v.rescan {
		v.addedSync = false
	}
	v.log.Info("sync scan done", "mode", mode.String(), "bytes", v.scanBytes, "seconds", time.Since(v.scanStart).Seconds())
}

// waitRoom blocks until the buffer has room for n more bytes below half its
// limit (guest writes keep the other half), or the scan was superseded.
func (v *vmState) waitRoom(gen int, n int64) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for v.scanGen == gen && !v.closed && v.bufBytes > 0 && v.bufBytes+n > v.opts.BufferBytes/2 {
		v.cond.Wait()
	}
	if v.scanGen != gen || v.closed {
		return false
	}
	return true
}

func (v *vmState) scanFailed(gen int, d *Disk, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.log.Error("sync scan failed", "disk", d.key, "err", err)
	if v.scanGen == gen {
		v.scanning = false
		v.reason = "sync scan failed: " + err.Error()
	}
}
