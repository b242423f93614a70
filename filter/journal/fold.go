package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// Maintenance (long-term points, retention) runs beside appends: it plans
// under the read lock, does the slow I/O with no lock (everything it reads
// is immutable and only maintenance deletes files), then writes the
// manifest and swaps the in-memory state in one step. Appends only ever add
// records above what maintenance looks at.

// topLayerID is the newest layer's ID, or the base's. Callers hold v.mu.
func (v *VM) topLayerID() uint64 {
	if n := len(v.layers); n > 0 {
		return v.layers[n-1].id
	}
	return v.m.BaseID
}

// CreateLongTerm makes the newest short-term point a long-term point at
// time t: the short-term data since the previous long-term point (or fold)
// is written into a new delta disk. The short-term points stay listed
// until retention folds them.
func (v *VM) CreateLongTerm(t time.Time) (PointInfo, error) {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	if v.removed.Load() {
		return PointInfo{}, fmt.Errorf("long-term point of %s: %w", v.name, ErrRemoved)
	}
	v.mu.RLock()
	if !v.m.InitialSyncDone {
		v.mu.RUnlock()
		return PointInfo{}, fmt.Errorf("long-term point of %s: %w: initial sync not done", v.name, model.ErrPrecond)
	}
	prev := v.topLayerID()
	var id uint64
	for i := len(v.records) - 1; i >= 0 && v.records[i].id > prev; i-- {
		if v.shortListed(v.records[i]) {
			id = v.records[i].id
			break
		}
	}
	if id == 0 {
		v.mu.RUnlock()
		return PointInfo{}, fmt.Errorf("long-term point of %s: %w: no short-term point since %d", v.name, model.ErrPrecond, prev)
	}
	plan := v.spans(view{hi: id, floor: prev})
	m := v.cloneManifest()
	v.mu.RUnlock()
	t = recordTime(t)
	l, err := v.writeLayer(id, t, true, plan)
	if err != nil {
		return PointInfo{}, fmt.Errorf("long-term point of %s: %w", v.name, err)
	}
	m.Layers = append(m.Layers, l.entry())
	err = v.commitManifest(&m, func() {
		v.layers = append(v.layers, l)
		v.m.Layers = m.Layers
	})
	if err != nil {
		v.dropLayerFile(l)
		return PointInfo{}, fmt.Errorf("long-term point of %s: %w", v.name, err)
	}
	v.s.log.Info("long-term point created", "vm", v.name, "point", id, "bytes", l.size)
	return PointInfo{ID: id, Time: t, Kind: model.PointLongTerm}, nil
}

// cloneManifest copies v.m with its slices and the current layers and
// LastID. Callers hold v.mu.
func (v *VM) cloneManifest() manifest {
	m := v.m
	m.Disks = append([]DiskSpec(nil), v.m.Disks...)
	m.Layers = make([]layerEntry, 0, len(v.layers))
	for _, l := range v.layers {
		m.Layers = append(m.Layers, l.entry())
	}
	m.LastID = v.lastID
	return m
}

func (v *VM) dropLayerFile(l *layer) {
	l.f.Close()
	os.Remove(filepath.Join(v.dir, l.file))
	v.s.release(l.size)
}

// ApplyRetention unlists short-term points older than shortTerm and
// long-term points older than longTerm (a zero duration keeps them), then
// folds their data: expired short-term records into a fold layer (so every
// later point reads as before), layers older than every listed point into
// the base. Segments with nothing left are deleted. The newest listed
// point is always kept.
func (v *VM) ApplyRetention(now time.Time, shortTerm, longTerm time.Duration) error {
	v.fmu.Lock()
	defer v.fmu.Unlock()
	if v.removed.Load() {
		return fmt.Errorf("retention of %s: %w", v.name, ErrRemoved)
	}
	if err := v.retainShort(now, shortTerm, longTerm); err != nil {
		return fmt.Errorf("retention of %s: %w", v.name, err)
	}
	if err := v.mergeIntoBase(); err != nil {
		return fmt.Errorf("retention of %s: %w", v.name, err)
	}
	return nil
}

// retainShort decides what is no longer listed and writes the fold layer
// of expired short-term points; the manifest then records both.
func (v *VM) retainShort(now time.Time, shortTerm, longTerm time.Duration) error {
	v.mu.RLock()
	if !v.m.InitialSyncDone {
		v.mu.RUnlock()
		return nil
	}
	listed := v.listLocked()
	if len(listed) == 0 {
		v.mu.RUnlock()
		return nil
	}
	newest := listed[len(listed)-1].ID
	m := v.cloneManifest()
	// New layer structs so that readers keep seeing the old listing until
	// the manifest is durable.
	layers := make([]*layer, len(v.layers))
	for i, l := range v.layers {
		c := *l
		layers[i] = &c
	}
	changed := false
	if longTerm > 0 {
		cut := now.Add(-longTerm)
		for _, l := range layers {
			if l.listed && l.time.Before(cut) && l.id != newest {
				l.listed = false
				changed = true
			}
		}
		if m.BaseListed && m.BaseTime.Before(cut) && m.BaseID != newest {
			m.BaseListed = false
			changed = true
		}
	}
	var x uint64
	if shortTerm > 0 {
		cut := now.Add(-shortTerm)
		for _, r := range v.records {
			if v.shortListed(r) && r.time.Before(cut) && r.id != newest {
				x = r.id
			}
		}
	}
	var plan []diskSpan
	var merged *layer
	foldNeeded := false
	if x > m.ShortCut {
		m.ShortCut = x
		changed = true
		isLayer := x == m.BaseID
		prev := m.BaseID
		var prevLayer *layer
		for _, l := range layers {
			if l.id == x {
				isLayer = true
			}
			if l.id < x && l.id > prev {
				prev, prevLayer = l.id, l
			}
		}
		if !isLayer {
			w := view{hi: x, floor: prev}
			if prevLayer != nil && !prevLayer.listed {
				// An unlisted layer just below is folded in too, so
				// folds do not pile up.
				w.layers = []*layer{prevLayer}
				merged = prevLayer
			}
			plan = v.spans(w)
			foldNeeded = true
		}
	}
	v.mu.RUnlock()
	if !changed {
		return nil
	}
	var fold *layer
	if foldNeeded {
		var err error
		if fold, err = v.writeLayer(x, recordTime(now), false, plan); err != nil {
			return err
		}
	}
	var out []*layer
	for _, l := range layers {
		if merged == nil || l.id != merged.id {
			out = append(out, l)
		}
	}
	if fold != nil {
		out = append(out, fold)
		sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	}
	m.Layers = m.Layers[:0]
	for _, l := range out {
		m.Layers = append(m.Layers, l.entry())
	}
	err := v.commitManifest(&m, func() {
		v.m = m
		v.layers = out
	})
	if err != nil {
		if fold != nil {
			v.dropLayerFile(fold)
		}
		return err
	}
	if merged != nil {
		v.dropLayerFile(merged)
	}
	if fold != nil {
		v.s.log.Info("short-term points folded", "vm", v.name, "through", x, "bytes", fold.size)
	}
	return nil
}

// mergeIntoBase writes into the base every layer at or below the oldest
// listed point (nothing listed can read the base's old state any more),
// then drops the records and segments no listed point needs.
func (v *VM) mergeIntoBase() error {
	v.mu.RLock()
	if !v.m.InitialSyncDone {
		v.mu.RUnlock()
		return nil
	}
	listed := v.listLocked()
	if len(listed) == 0 {
		v.mu.RUnlock()
		return nil
	}
	oldest := listed[0].ID
	var merge []*layer // newest first
	for i := len(v.layers) - 1; i >= 0; i-- {
		if v.layers[i].id <= oldest {
			merge = append(merge, v.layers[i])
		}
	}
	m := v.cloneManifest()
	var plan []diskSpan
	if len(merge) > 0 {
		top := merge[0]
		plan = v.spans(view{hi: top.id, floor: top.id, layers: merge})
		m.BaseID, m.BaseTime, m.BaseListed = top.id, top.time, top.listed
		m.Layers = m.Layers[:0]
		for _, l := range v.layers {
			if l.id > top.id {
				m.Layers = append(m.Layers, l.entry())
			}
		}
	}
	// Records at or below the newest layer that no listed short-term point
	// sits above are covered by that layer. Appends running meanwhile only
	// add points above all of these.
	minShort := ^uint64(0)
	for _, p := range listed {
		if p.Kind == model.PointShortTerm {
			minShort = min(minShort, p.ID)
		}
	}
	drop := m.BaseID
	for _, e := range m.Layers {
		if e.ID <= minShort {
			drop = max(drop, e.ID)
		}
	}
	m.DropThrough = max(m.DropThrough, drop)
	same := len(merge) == 0 && m.DropThrough == v.m.DropThrough
	v.mu.RUnlock()
	if same {
		return nil
	}
	if len(merge) > 0 {
		// The layers stay (in memory and in the manifest) until the
		// manifest below is durable, and shadow every byte written here,
		// so readers and a crash in between see the same.
		if err := v.applyToBaseFiles(plan); err != nil {
			return err
		}
	}
	err := v.commitManifest(&m, func() {
		var keep []*layer
		for _, l := range v.layers {
			if l.id > m.BaseID {
				keep = append(keep, l)
			}
		}
		v.layers = keep
		v.m = m
		v.rebuildIndex()
	})
	if err != nil {
		return err
	}
	for _, l := range merge {
		v.dropLayerFile(l)
	}
	v.s.dropSegments()
	if len(merge) > 0 {
		v.s.log.Info("long-term points merged into base", "vm", v.name, "base", m.BaseID, "layers", len(merge))
	}
	return nil
}

// applyToBaseFiles writes planned spans into the base files and makes them
// durable.
func (v *VM) applyToBaseFiles(plan []diskSpan) error {
	buf := v.s.getBuf(1 << 20)[:1<<20]
	defer v.s.putBuf(buf)
	touched := map[int32]bool{}
	for _, s := range plan {
		v.mu.RLock()
		f := v.base[s.disk]
		v.mu.RUnlock()
		touched[s.disk] = true
		switch s.src {
		case srcZero:
			if err := punchZero(f, s.off, s.end-s.off); err != nil {
				return fmt.Errorf("merge into base disk %d: %w", s.disk, err)
			}
		case srcFile:
			if err := copyAt(&offWriter{f: f, off: s.off}, s.f, s.pos, s.end-s.off, buf); err != nil {
				return fmt.Errorf("merge into base disk %d: %w", s.disk, err)
			}
		}
	}
	for d := range touched {
		v.mu.RLock()
		f := v.base[d]
		v.mu.RUnlock()
		if err := v.s.syncFile(f); err != nil {
			return fmt.Errorf("fsync base disk %d: %w", d, err)
		}
	}
	return nil
}

type offWriter struct {
	f   *os.File
	off int64
}

func (w *offWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.off)
	w.off += int64(n)
	return n, err
}
