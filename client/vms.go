package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/continuum-cdp/continuum/internal/model"
)

// VMDisk is one protected disk of a VM and where its writes go in.
type VMDisk struct {
	Key           int32 `json:"key"`
	CapacityBytes int64 `json:"capacity_bytes"`
	// NBDURI is nbd://FILTER/VM/KEY on the filter of the host the VM runs
	// on; empty while that filter has not reported its NBD address.
	NBDURI string `json:"nbd_uri"`
}

// VMDisks is the body of GET /api/v1/vms/{vm}/disks.
type VMDisks struct {
	VM       string   `json:"vm"`
	VMMoRef  string   `json:"vm_moref,omitempty"`
	PolicyID string   `json:"policy_id"`
	Host     string   `json:"host,omitempty"` // host ID the VM runs on
	Disks    []VMDisk `json:"disks"`
}

// RestorePointInfo is one restore point of a protected VM, as listed by
// the filter that keeps its journal.
type RestorePointInfo struct {
	ID   uint64          `json:"id"`
	Time time.Time       `json:"time"`
	Kind model.PointKind `json:"kind"`
}

// FilterInstallRequest is the body of POST /api/v1/filter/install.
type FilterInstallRequest struct {
	// VCenterID names the vCenter (ID or name); optional with one vCenter.
	VCenterID string `json:"vcenter_id,omitempty"`
	Cluster   string `json:"cluster"` // name or MoRef
}

// InstallFilter installs the I/O filter on a cluster and returns the
// cluster record.
func (c *Client) InstallFilter(ctx context.Context, req FilterInstallRequest) (*model.Cluster, error) {
	var r model.Cluster
	return &r, c.Do(ctx, http.MethodPost, "/api/v1/filter/install", req, &r)
}

func vmPath(vm string) string { return "/api/v1/vms/" + esc(vm) }

// VMDisks lists a protected VM's disks with their NBD URIs.
func (c *Client) VMDisks(ctx context.Context, vm string) (*VMDisks, error) {
	var r VMDisks
	return &r, c.Do(ctx, http.MethodGet, vmPath(vm)+"/disks", nil, &r)
}

// RestorePoints lists a protected VM's restore points, oldest first.
func (c *Client) RestorePoints(ctx context.Context, vm string) ([]RestorePointInfo, error) {
	var r []RestorePointInfo
	return r, c.Do(ctx, http.MethodGet, vmPath(vm)+"/restore-points", nil, &r)
}

// ExportRestorePoint writes the raw image of a disk of vm at a restore
// point into the file out, sparse (zero blocks are skipped), through a
// temporary file renamed into place once complete: a failed export leaves
// nothing behind. It returns the image size.
func (c *Client) ExportRestorePoint(ctx context.Context, vm string, disk int32, point uint64, out string) (int64, error) {
	path := fmt.Sprintf("%s/restore-points/%d/disks/%d/image", vmPath(vm), point, disk)
	what := fmt.Sprintf("export %s disk %d at point %d", vm, disk, point)
	var resp *http.Response
	var err error
	for i, ep := range c.endpoints {
		resp, err = c.get(ctx, ep+path)
		if err == nil || !retryable(err) || i == len(c.endpoints)-1 {
			break
		}
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	defer resp.Body.Close()
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
	if err != nil {
		return 0, fmt.Errorf("%s to %s: %w", what, out, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	n, err := copySparse(f, resp.Body)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", what, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return 0, fmt.Errorf("%s: got %d of %d bytes", what, n, resp.ContentLength)
	}
	for _, step := range []func() error{func() error { return f.Truncate(n) }, f.Sync, f.Close, func() error { return os.Rename(tmp, out) }} {
		if err := step(); err != nil {
			return 0, fmt.Errorf("%s to %s: %w", what, out, err)
		}
	}
	ok = true
	return n, nil
}

// get sends a GET whose body the caller streams; an error answer is
// decoded into an *APIError.
func (c *Client) get(ctx context.Context, u string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	// The image streams for as long as the disk takes: no overall
	// timeout here, ctx bounds it.
	resp, err := (&http.Client{Transport: c.hc.Transport}).Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb ErrorBody
	if json.Unmarshal(data, &eb) == nil && eb.Error.Code != "" {
		return nil, &APIError{Status: resp.StatusCode, Code: eb.Error.Code, Message: eb.Error.Message, Field: eb.Error.Field}
	}
	msg := strings.TrimSpace(string(data))
	if len(msg) > 200 {
		msg = msg[:200]
	}
	return nil, &APIError{Status: resp.StatusCode, Code: model.CodeInternal, Message: msg}
}

// copySparse copies r into f, seeking over all-zero blocks.
func copySparse(f *os.File, r io.Reader) (int64, error) {
	const block = 64 << 10
	buf := make([]byte, block)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 && !allZero(buf[:n]) {
			if _, werr := f.WriteAt(buf[:n], off); werr != nil {
				return off, werr
			}
		}
		off += int64(n)
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
