package source

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/model"
)

// DiskStatus is the state of one protected disk.
type DiskStatus struct {
	Key            int32          `json:"key"`
	Export         string         `json:"export"`
	Path           string         `json:"path"`
	Capacity       int64          `json:"capacity"`
	Status         model.VMStatus `json:"status"`
	Reason         string         `json:"reason,omitempty"`
	SyncDoneBytes  int64          `json:"sync_done_bytes"`
	SyncTotalBytes int64          `json:"sync_total_bytes"`
	DirtyBlocks    int            `json:"dirty_blocks"`
}

// VMStatus is the state of one protected VM's stream.
type VMStatus struct {
	VM                  string         `json:"vm"`
	Status              model.VMStatus `json:"status"`
	Mode                string         `json:"mode"`
	Reason              string         `json:"reason,omitempty"`
	Connected           bool           `json:"connected"`
	Link                string         `json:"link,omitempty"` // protection of the connection to the source proxy: "tls", "integrity" (integrity frames) or "clear"
	Seq                 uint64         `json:"seq"`
	Acked               uint64         `json:"acked"`
	BufferBytes         int64          `json:"buffer_bytes"`
	BufferEntries       int            `json:"buffer_entries"`
	LagSeconds          float64        `json:"lag_seconds"`
	SyncDoneBytes       int64          `json:"sync_done_bytes"`
	SyncTotalBytes      int64          `json:"sync_total_bytes"`
	SyncRateBytesPerSec float64        `json:"sync_rate_bytes_per_sec"`
	CBTEntries          int64          `json:"cbt_entries"`
	// ThrottledWrites counts guest writes delayed for room in the buffer
	// (BackpressureWait), ThrottledSeconds their total wait.
	ThrottledWrites  int64        `json:"throttled_writes"`
	ThrottledSeconds float64      `json:"throttled_seconds"`
	Disks            []DiskStatus `json:"disks"`
}

// Service is the source filter of one host: its protected VMs and disks.
// The VMs can change while it runs (Apply).
type Service struct {
	opts Options

	// applyMu serialises Apply and Close: a VM is opened or closed by one
	// of them at a time.
	applyMu sync.Mutex

	mu      sync.Mutex
	vms     []*vmState
	running bool
	closed  bool
	ctx     context.Context
	cancel  context.CancelFunc
}

// New validates the options and opens (creating if missing) every disk.
func New(opts Options) (*Service, error) {
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("source filter options: %w", err)
	}
	opts.setDefaults()
	if opts.ScanChunk > opts.BufferBytes/4 {
		opts.ScanChunk = max(opts.BlockSize, opts.BufferBytes/4/opts.BlockSize*opts.BlockSize)
	}
	s := &Service{opts: opts}
	for _, c := range opts.VMs {
		v, err := s.openVM(c)
		if err != nil {
			for _, o := range s.vms {
				s.closeVM(o)
			}
			return nil, err
		}
		s.vms = append(s.vms, v)
	}
	return s, nil
}

// openVM opens a VM's files and exports its disks.
func (s *Service) openVM(c VMConfig) (*vmState, error) {
	v, err := newVM(c, &s.opts)
	if err != nil {
		return nil, err
	}
	for i, d := range v.disks {
		if err := s.export(d); err != nil {
			for _, o := range v.disks[:i] {
				s.unexport(o)
			}
			v.close()
			return nil, err
		}
	}
	return v, nil
}

func (s *Service) export(d *Disk) error {
	if s.opts.Exports == nil {
		return nil
	}
	if err := s.opts.Exports.AddExport(nbd.Export{Name: d.ExportName(), Description: d.Path(), Backend: d}); err != nil {
		return fmt.Errorf("export disk %s: %w", d.ExportName(), err)
	}
	return nil
}

func (s *Service) unexport(d *Disk) {
	if s.opts.Exports == nil {
		return
	}
	if err := s.opts.Exports.RemoveExport(d.ExportName()); err != nil && !errors.Is(err, nbd.ErrUnknownExport) {
		s.opts.Logger.Warn("withdraw nbd export", "export", d.ExportName(), "err", err)
	}
}

// vmList is a copy of the open VMs.
func (s *Service) vmList() []*vmState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*vmState(nil), s.vms...)
}

// Disks lists every protected disk, VM by VM; each is an NBD backend.
func (s *Service) Disks() []*Disk {
	var out []*Disk
	for _, v := range s.vmList() {
		out = append(out, v.diskList()...)
	}
	return out
}

// Disk finds a disk by VM name and key.
func (s *Service) Disk(vm string, key int32) (*Disk, bool) {
	for _, v := range s.vmList() {
		if v.name == vm {
			v.mu.Lock()
			d := v.disk(key)
			v.mu.Unlock()
			return d, d != nil
		}
	}
	return nil, false
}

// Start runs the streams until ctx ends or Close.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errors.New("source filter closed")
	}
	if s.running {
		return errors.New("source filter already started")
	}
	s.running = true
	s.ctx, s.cancel = context.WithCancel(ctx)
	for _, v := range s.vms {
		s.startVMLocked(v)
	}
	return nil
}

// startVMLocked runs one VM's stream and its ticker. Called with s.mu held.
func (s *Service) startVMLocked(v *vmState) {
	ctx, cancel := context.WithCancel(s.ctx)
	v.cancel = cancel
	v.runWG.Add(2)
	go func() { defer v.runWG.Done(); v.run(ctx) }()
	go func() {
		defer v.runWG.Done()
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case now := <-t.C:
				v.tick(now)
			}
		}
	}()
}

// Apply makes the protected VMs those of vms, while running: a new VM is
// opened (resuming from the state its folder holds, if any) and started; a
// VM gone from the list is stopped, its bitmaps made durable and its files
// closed (they stay on disk); a VM with new disks opens them, and syncs
// them in full while the others keep streaming; a VM whose proxy changed
// moves to it. A disk that left a VM, or changed capacity, closes and
// reopens the VM. An invalid list changes nothing; otherwise every VM that
// can be applied is, and the errors of the others are returned (applying
// again retries them).
func (s *Service) Apply(vms []VMConfig) error {
	if err := s.opts.validateVMs(vms); err != nil {
		return fmt.Errorf("apply source filter configuration: %w", err)
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return errors.New("apply source filter configuration: the filter is closed")
	}
	want := map[string]VMConfig{}
	for _, c := range vms {
		want[c.Name] = c
	}
	var errs []error
	for _, v := range s.vmList() {
		if c, ok := want[v.name]; ok && v.keeps(c) {
			continue
		}
		s.mu.Lock()
		for i, o := range s.vms {
			if o == v {
				s.vms = append(s.vms[:i], s.vms[i+1:]...)
				break
			}
		}
		s.mu.Unlock()
		if err := s.closeVM(v); err != nil {
			errs = append(errs, fmt.Errorf("close vm %s: %w", v.name, err))
		}
		s.opts.Logger.Info("vm closed", "vm", v.name)
	}
	for _, c := range vms {
		var v *vmState
		for _, o := range s.vmList() {
			if o.name == c.Name {
				v = o
			}
		}
		if v == nil {
			v, err := s.openVM(c)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			s.mu.Lock()
			s.vms = append(s.vms, v)
			if s.running {
				s.startVMLocked(v)
			}
			s.mu.Unlock()
			s.opts.Logger.Info("vm opened", "vm", v.name, "disks", len(c.Disks), "proxy", c.Proxy)
			continue
		}
		if err := s.addDisks(v, c); err != nil {
			errs = append(errs, err)
		}
		v.mu.Lock()
		if v.proxy != c.Proxy {
			v.log.Info("moving to another source proxy", "from", v.proxy, "to", c.Proxy)
			v.proxy = c.Proxy
			v.kickLocked()
		}
		v.mu.Unlock()
	}
	return errors.Join(errs...)
}

// CheckVM validates one wanted VM the way Apply does, so that a caller can
// leave out a bad one instead of having the whole list refused.
func (s *Service) CheckVM(c VMConfig) error {
	return s.opts.validateVMs([]VMConfig{c})
}

// keeps says whether the open VM can become c without closing: each of
// its disks is still wanted, with the same capacity and file.
func (v *vmState) keeps(c VMConfig) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, d := range v.disks {
		found := false
		for _, dc := range c.Disks {
			if dc.Key == d.key {
				found = dc.Capacity == d.capacity && (dc.File == "" || dc.File == d.path)
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// addDisks opens the disks of c the VM does not have yet. The target's
// copy of a new disk is unknown, so every block of it is dirty; the next
// session (the current one no longer describes the VM) syncs them.
func (s *Service) addDisks(v *vmState, c VMConfig) error {
	var errs []error
	for i, dc := range c.Disks {
		v.mu.Lock()
		have := v.disk(dc.Key) != nil
		v.mu.Unlock()
		if have {
			continue
		}
		d, err := openDisk(v, v.dir, i, dc, s.opts.BlockSize)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := v.checkPath(d); err != nil {
			d.close()
			errs = append(errs, err)
			continue
		}
		if err := d.dirty.markAll(); err != nil {
			d.close()
			errs = append(errs, fmt.Errorf("add disk %d to %s: %w", dc.Key, v.name, err))
			continue
		}
		v.mu.Lock()
		v.disks = append(v.disks, d)
		v.rescan, v.addedSync = true, true
		v.reason = fmt.Sprintf("initial sync of added disk %d", d.key)
		v.kickLocked()
		v.mu.Unlock()
		if err := s.export(d); err != nil {
			errs = append(errs, err)
		}
		v.log.Info("disk added", "disk", d.key, "path", d.path)
	}
	return errors.Join(errs...)
}

// checkPath refuses a new disk whose file another disk of the VM uses.
func (v *vmState) checkPath(d *Disk) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, o := range v.disks {
		if o.path == d.path {
			return fmt.Errorf("add disk %d to %s: file %s belongs to disk %d", d.key, v.name, d.path, o.key)
		}
	}
	return nil
}

// closeVM withdraws the VM's exports, stops its stream and scan, makes its
// dirty bitmaps durable and closes its files. Writes still buffered are
// not lost: their blocks are dirty.
func (s *Service) closeVM(v *vmState) error {
	for _, d := range v.diskList() {
		s.unexport(d)
	}
	if v.cancel != nil {
		v.cancel()
	}
	v.mu.Lock()
	v.closed = true
	v.scanGen++
	v.cond.Broadcast()
	v.mu.Unlock()
	v.runWG.Wait()
	v.scanWG.Wait()
	var errs []error
	v.mu.Lock()
	for _, d := range v.disks {
		if err := d.dirty.sync(); err != nil {
			errs = append(errs, err)
		}
	}
	v.mu.Unlock()
	v.close()
	return errors.Join(errs...)
}

func (v *vmState) diskList() []*Disk {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]*Disk(nil), v.disks...)
}

// VMs lists the names of the open VMs.
func (s *Service) VMs() []string {
	var out []string
	for _, v := range s.vmList() {
		out = append(out, v.name)
	}
	sort.Strings(out)
	return out
}

// Status reports every VM, sorted by name.
func (s *Service) Status() []VMStatus {
	now := time.Now()
	vms := s.vmList()
	out := make([]VMStatus, 0, len(vms))
	for _, v := range vms {
		out = append(out, v.status(now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

// Close stops the streams, makes the dirty bitmaps durable and closes the
// disks. Writes still buffered are not lost: their blocks are dirty.
func (s *Service) Close() error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	vms := s.vms
	s.vms = nil
	s.mu.Unlock()
	var errs []error
	for _, v := range vms {
		errs = append(errs, s.closeVM(v))
	}
	return errors.Join(errs...)
}
