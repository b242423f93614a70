package target

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Client talks to a target filter's admin API.
type Client struct {
	base string
	hc   *http.Client
}

// NewClient checks baseURL ("http://127.0.0.1:9443") and builds a client;
// hc nil uses a client with a generous timeout for exports.
func NewClient(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("filter API URL %q: want http(s)://HOST:PORT", baseURL)
	}
	if hc == nil {
		hc = &http.Client{Timeout: time.Hour}
	}
	return &Client{base: strings.TrimRight(baseURL, "/"), hc: hc}, nil
}

// RemoteError is an error answer of the admin API.
type RemoteError struct {
	Status  int
	Code    string
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s (%s, HTTP %d)", e.Message, e.Code, e.Status)
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return fmt.Errorf("%s %s: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if err := checkResp(resp); err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode answer: %w", method, path, err)
	}
	return nil
}

func checkResp(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e APIError
	if json.Unmarshal(b, &e) == nil && e.Error.Message != "" {
		return &RemoteError{Status: resp.StatusCode, Code: e.Error.Code, Message: e.Error.Message}
	}
	return &RemoteError{Status: resp.StatusCode, Code: "http", Message: strings.TrimSpace(string(b))}
}

func vmPath(vm string) string { return "/v1/vms/" + url.PathEscape(vm) }

// VMs lists the replicated VMs.
func (c *Client) VMs(ctx context.Context) ([]VMInfo, error) {
	var out []VMInfo
	return out, c.do(ctx, http.MethodGet, "/v1/vms", nil, &out)
}

// Points lists the restore points of vm, oldest first.
func (c *Client) Points(ctx context.Context, vm string) ([]PointInfo, error) {
	var out []PointInfo
	return out, c.do(ctx, http.MethodGet, vmPath(vm)+"/points", nil, &out)
}

// ExportOnFilter has the target filter write the image to a path on its
// own host.
func (c *Client) ExportOnFilter(ctx context.Context, vm string, req ExportRequest) (ExportResult, error) {
	var out ExportResult
	return out, c.do(ctx, http.MethodPost, vmPath(vm)+"/export", req, &out)
}

// Serve exports every disk of vm at point read-only over NBD.
func (c *Client) Serve(ctx context.Context, vm string, point uint64) (ServeResult, error) {
	var out ServeResult
	return out, c.do(ctx, http.MethodPost, vmPath(vm)+"/serve", ServeRequest{Point: point}, &out)
}

// Unserve removes the NBD exports of a served point.
func (c *Client) Unserve(ctx context.Context, vm string, point uint64) error {
	return c.do(ctx, http.MethodDelete, vmPath(vm)+"/serve/"+strconv.FormatUint(point, 10), nil, nil)
}

// RemoveVM deletes the journal of a VM no longer replicated by the
// filter: every restore point and its replica disks there.
func (c *Client) RemoveVM(ctx context.Context, vm string) error {
	return c.do(ctx, http.MethodDelete, vmPath(vm), nil, nil)
}

// LongTerm creates a long-term point from the newest short-term point.
func (c *Client) LongTerm(ctx context.Context, vm string) (PointInfo, error) {
	var out PointInfo
	return out, c.do(ctx, http.MethodPost, vmPath(vm)+"/long-term", nil, &out)
}

// SetRetention sets vm's retention windows and applies them at once.
func (c *Client) SetRetention(ctx context.Context, vm string, w Window) error {
	return c.do(ctx, http.MethodPost, vmPath(vm)+"/retention", w, nil)
}

// Export downloads the raw image of disk at point into the file out,
// sparse (zero blocks are skipped), via a temporary file renamed into
// place only once complete, so a failed export leaves nothing behind.
func (c *Client) Export(ctx context.Context, vm string, disk int32, point uint64, out string) (int64, error) {
	path := fmt.Sprintf("%s/points/%d/disks/%d/image", vmPath(vm), point, disk)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return 0, fmt.Errorf("export %s point %d disk %d: %w", vm, point, disk, err)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("export %s point %d disk %d: %w", vm, point, disk, err)
	}
	defer resp.Body.Close()
	if err := checkResp(resp); err != nil {
		return 0, fmt.Errorf("export %s point %d disk %d: %w", vm, point, disk, err)
	}
	f, err := os.CreateTemp(filepath.Dir(out), "."+filepath.Base(out)+".part-*")
	if err != nil {
		return 0, fmt.Errorf("export to %s: %w", out, err)
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
		return 0, fmt.Errorf("export %s point %d disk %d: %w", vm, point, disk, err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return 0, fmt.Errorf("export %s point %d disk %d: got %d of %d bytes", vm, point, disk, n, resp.ContentLength)
	}
	if err := f.Truncate(n); err != nil {
		return 0, fmt.Errorf("export to %s: %w", out, err)
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("export to %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return 0, fmt.Errorf("export to %s: %w", out, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return 0, fmt.Errorf("export to %s: %w", out, err)
	}
	ok = true
	return n, nil
}

// copySparse copies r into f, seeking over all-zero blocks.
func copySparse(f *os.File, r io.Reader) (int64, error) {
	const block = 64 << 10
	buf := make([]byte, block)
	var off int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if isZero(buf[:n]) {
				off += int64(n)
			} else {
				if _, werr := f.WriteAt(buf[:n], off); werr != nil {
					return off, werr
				}
				off += int64(n)
			}
		}
		if err == io.EOF || errors.Is(err, io.ErrUnexpectedEOF) {
			return off, nil
		}
		if err != nil {
			return off, err
		}
	}
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
