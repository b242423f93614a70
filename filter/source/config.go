package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/continuum-cdp/continuum/filter/nbd"
)

// DiskConfig is one protected disk.
type DiskConfig struct {
	Key      int32 `json:"key"`
	Capacity int64 `json:"capacity"`
	// File overrides the flat file path; default "<datastore>/<vm>/<vm>[_N]-flat.vmdk".
	File string `json:"file,omitempty"`
}

// VMConfig is one protected VM and its disks.
type VMConfig struct {
	Name  string       `json:"name"`
	Disks []DiskConfig `json:"disks"`
	// Proxy is the data address of the VM's source proxy; empty uses
	// Options.Dial (one proxy for every VM).
	Proxy string `json:"proxy,omitempty"`
}

// Exporter publishes the protected disks to their writers (the NBD server
// implements it): a disk is added once open and removed before it closes.
type Exporter interface {
	AddExport(nbd.Export) error
	RemoveExport(name string) error
}

// Options configure a Service.
type Options struct {
	NodeID    string
	Datastore string // source datastore directory
	VMs       []VMConfig
	// Dial opens a connection to the source proxy of VMs without their own
	// Proxy address (TLS is the caller's choice).
	Dial func(ctx context.Context) (net.Conn, error)
	// DialProxy opens a connection to the source proxy at addr, for VMs
	// that name their proxy.
	DialProxy func(ctx context.Context, addr string) (net.Conn, error)
	// Exports, if set, gets every disk as an NBD export while it is open.
	Exports Exporter
	// Exclusive locks each VM's folder (flock) while the VM is open here,
	// so that two filters sharing a datastore never run the same VM at
	// once (a vMotion hands it over only once the old host let it go).
	Exclusive bool
	// BufferBytes bounds the unacknowledged writes held per VM; beyond it the
	// VM goes to CBT mode. Default 256 MiB.
	BufferBytes int64
	// BackpressureWait is how long a guest write that does not fit in the
	// buffer waits for acknowledgements to make room, while the proxy is
	// connected, before the VM goes to CBT mode: a burst slows the guest
	// to the pace of the path instead of costing a re-read of its disks.
	// Default 1s; negative: no wait.
	BackpressureWait time.Duration
	// BlockSize is the CBT granularity. Default 64 KiB.
	BlockSize int64
	// BufferedIO writes the disks through the page cache even where the
	// file system offers direct I/O (see Disk).
	BufferedIO bool
	// Grace is how long the proxy may stay unreachable before CBT mode. Default 30s.
	Grace time.Duration
	// ScanChunk is the read size of the sync scans. Default 1 MiB.
	ScanChunk int64
	Logger    *slog.Logger
	// OnStamp, if set, sees every write and marker as it is stamped, in
	// sequence order (under the VM's lock: it must not block). Tests use it
	// to keep a model of the stream.
	OnStamp func(Stamp)
}

// Stamp describes one stamped message of a VM's stream. Data is only
// valid during the call.
type Stamp struct {
	VM     string
	Seq    uint64
	Marker uint8 // wire.Marker* kind, 0 for a write
	Disk   int32
	Off    int64
	Len    int64
	Op     uint8
	Flags  uint8
	Data   []byte
}

func (o *Options) setDefaults() {
	if o.BufferBytes <= 0 {
		o.BufferBytes = 256 << 20
	}
	if o.BackpressureWait == 0 {
		o.BackpressureWait = time.Second
	}
	if o.BlockSize <= 0 {
		o.BlockSize = 64 << 10
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	if o.ScanChunk <= 0 {
		o.ScanChunk = 1 << 20
	}
	if o.ScanChunk%o.BlockSize != 0 {
		o.ScanChunk = (o.ScanChunk/o.BlockSize + 1) * o.BlockSize
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.NodeID == "" {
		o.NodeID = "source-filter"
	}
}

// Validate checks the options before anything is opened.
func (o *Options) Validate() error {
	var errs []error
	if o.Datastore == "" {
		errs = append(errs, errors.New("datastore directory is required"))
	}
	if o.Dial == nil && o.DialProxy == nil {
		errs = append(errs, errors.New("a dialer for the source proxy is required"))
	}
	if o.BlockSize > 0 && o.BlockSize%512 != 0 {
		errs = append(errs, fmt.Errorf("block size %d is not a multiple of 512", o.BlockSize))
	}
	errs = append(errs, o.validateVMs(o.VMs))
	return errors.Join(errs...)
}

// validateVMs checks a list of wanted VMs.
func (o *Options) validateVMs(vms []VMConfig) error {
	var errs []error
	seen := map[string]bool{}
	for _, vm := range vms {
		if vm.Proxy == "" && o.Dial == nil {
			errs = append(errs, fmt.Errorf("vm %q names no source proxy and there is no default one", vm.Name))
		}
		if vm.Proxy != "" && o.DialProxy == nil {
			errs = append(errs, fmt.Errorf("vm %q names source proxy %s but the filter cannot dial by address", vm.Name, vm.Proxy))
		}
		if vm.Name == "" || strings.ContainsAny(vm.Name, "/\\") || vm.Name == "." || vm.Name == ".." {
			errs = append(errs, fmt.Errorf("vm name %q is not a valid folder name", vm.Name))
		}
		if seen[vm.Name] {
			errs = append(errs, fmt.Errorf("vm %q listed twice", vm.Name))
		}
		seen[vm.Name] = true
		if len(vm.Disks) == 0 {
			errs = append(errs, fmt.Errorf("vm %q has no disks", vm.Name))
		}
		keys := map[int32]bool{}
		for _, d := range vm.Disks {
			if keys[d.Key] {
				errs = append(errs, fmt.Errorf("vm %q: disk key %d listed twice", vm.Name, d.Key))
			}
			keys[d.Key] = true
			if d.Capacity <= 0 || d.Capacity%512 != 0 {
				errs = append(errs, fmt.Errorf("vm %q disk %d: capacity %d must be a positive multiple of 512", vm.Name, d.Key, d.Capacity))
			}
		}
	}
	return errors.Join(errs...)
}
