package source

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

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
	Seq                 uint64         `json:"seq"`
	Acked               uint64         `json:"acked"`
	BufferBytes         int64          `json:"buffer_bytes"`
	BufferEntries       int            `json:"buffer_entries"`
	LagSeconds          float64        `json:"lag_seconds"`
	SyncDoneBytes       int64          `json:"sync_done_bytes"`
	SyncTotalBytes      int64          `json:"sync_total_bytes"`
	SyncRateBytesPerSec float64        `json:"sync_rate_bytes_per_sec"`
	CBTEntries          int64          `json:"cbt_entries"`
	Disks               []DiskStatus   `json:"disks"`
}

// Service is the source filter of one host: its protected VMs and disks.
type Service struct {
	opts Options
	vms  []*vmState

	mu      sync.Mutex
	running bool
	cancel  context.CancelFunc
	wg      sync.WaitGroup
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
		v, err := newVM(c, &s.opts)
		if err != nil {
			for _, o := range s.vms {
				o.close()
			}
			return nil, err
		}
		s.vms = append(s.vms, v)
	}
	return s, nil
}

// Disks lists every protected disk, VM by VM; each is an NBD backend.
func (s *Service) Disks() []*Disk {
	var out []*Disk
	for _, v := range s.vms {
		out = append(out, v.disks...)
	}
	return out
}

// Disk finds a disk by VM name and key.
func (s *Service) Disk(vm string, key int32) (*Disk, bool) {
	for _, v := range s.vms {
		if v.name == vm {
			d := v.disk(key)
			return d, d != nil
		}
	}
	return nil, false
}

// Start runs the streams until ctx ends or Close.
func (s *Service) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.running {
		return errors.New("source filter already started")
	}
	s.running = true
	ctx, s.cancel = context.WithCancel(ctx)
	for _, v := range s.vms {
		s.wg.Add(2)
		go func() { defer s.wg.Done(); v.run(ctx) }()
		go func() {
			defer s.wg.Done()
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
	return nil
}

// Status reports every VM, sorted by name.
func (s *Service) Status() []VMStatus {
	now := time.Now()
	out := make([]VMStatus, 0, len(s.vms))
	for _, v := range s.vms {
		out = append(out, v.status(now))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out
}

// Close stops the streams, makes the dirty bitmaps durable and closes the
// disks. Writes still buffered are not lost: their blocks are dirty.
func (s *Service) Close() error {
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
	}
	s.mu.Unlock()
	for _, v := range s.vms {
		v.mu.Lock()
		v.closed = true
		v.scanGen++
		v.cond.Broadcast()
		v.mu.Unlock()
	}
	s.wg.Wait()
	for _, v := range s.vms {
		v.scanWG.Wait()
	}
	var errs []error
	for _, v := range s.vms {
		v.mu.Lock()
		for _, d := range v.disks {
			if err := d.dirty.sync(); err != nil {
				errs = append(errs, err)
			}
		}
		v.mu.Unlock()
		v.close()
	}
	return errors.Join(errs...)
}
