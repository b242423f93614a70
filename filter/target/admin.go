package target

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/continuum-cdp/continuum/filter/journal"
	"github.com/continuum-cdp/continuum/filter/nbd"
	"github.com/continuum-cdp/continuum/internal/model"
)

// API bodies. They are the user-facing contract of the admin API.
type (
	// VMInfo is one replicated VM in GET /v1/vms.
	VMInfo struct {
		VM              string     `json:"vm"`
		LastID          uint64     `json:"last_id"`
		InitialSyncDone bool       `json:"initial_sync_done"`
		Disks           []DiskInfo `json:"disks"`
		Points          int        `json:"points"`
		Retention       Window     `json:"retention"`
	}
	// DiskInfo is a disk of a replica.
	DiskInfo struct {
		Key      int32 `json:"key"`
		Capacity int64 `json:"capacity"`
	}
	// PointInfo is a listed restore point.
	PointInfo struct {
		ID   uint64          `json:"id"`
		Time time.Time       `json:"time"`
		Kind model.PointKind `json:"kind"`
	}
	// ExportRequest asks for a raw image of a disk at a point, written by
	// the target filter to Path on its own host.
	ExportRequest struct {
		Point uint64 `json:"point"`
		Disk  int32  `json:"disk"`
		Path  string `json:"path"`
	}
	// ExportResult is the answer to an export.
	ExportResult struct {
		Path  string `json:"path"`
		Bytes int64  `json:"bytes"`
	}
	// ServeRequest asks for a read-only NBD export of every disk at a point.
	ServeRequest struct {
		Point uint64 `json:"point"`
	}
	// ServeResult lists the NBD URI of each disk.
	ServeResult struct {
		Point   uint64       `json:"point"`
		Exports []ServedDisk `json:"exports"`
	}
	// ServedDisk is one disk's NBD export.
	ServedDisk struct {
		Disk   int32  `json:"disk"`
		Export string `json:"export"`
		URI    string `json:"uri"`
	}
	// Window is a retention setting.
	Window struct {
		ShortTerm model.Duration `json:"short_term"`
		LongTerm  model.Duration `json:"long_term"`
	}
	// APIError is every error body.
	APIError struct {
		Error struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
)

const maxBody = 1 << 20

func (s *Service) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /v1/vms", s.handleVMs)
	mux.HandleFunc("GET /v1/vms/{vm}/points", s.handlePoints)
	mux.HandleFunc("GET /v1/vms/{vm}/points/{point}/disks/{disk}/image", s.handleImage)
	mux.HandleFunc("POST /v1/vms/{vm}/export", s.handleExport)
	mux.HandleFunc("POST /v1/vms/{vm}/serve", s.handleServe)
	mux.HandleFunc("DELETE /v1/vms/{vm}/serve/{point}", s.handleUnserve)
	mux.HandleFunc("POST /v1/vms/{vm}/long-term", s.handleLongTerm)
	mux.HandleFunc("POST /v1/vms/{vm}/retention", s.handleRetention)
	mux.HandleFunc("DELETE /v1/vms/{vm}", s.handleRemove)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, err error) {
	code := model.ErrorCode(err)
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, journal.ErrNotListed):
		code, status = model.CodeNotFound, http.StatusNotFound
	case errors.Is(err, syscall.ENOSPC):
		code, status = model.CodeUnavailable, http.StatusInsufficientStorage
	case code == model.CodeInvalid:
		status = http.StatusBadRequest
	case code == model.CodeNotFound:
		status = http.StatusNotFound
	case code == model.CodeConflict:
		status = http.StatusConflict
	case code == model.CodeFailedPrecond:
		status = http.StatusPreconditionFailed
	}
	var e APIError
	e.Error.Code, e.Error.Message = code, err.Error()
	writeJSON(w, status, e)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: request body: %v", model.ErrInvalid, err)
	}
	return nil
}

func (s *Service) vmOf(r *http.Request) (*journal.VM, error) {
	name := r.PathValue("vm")
	v, ok := s.store.VM(name)
	if !ok {
		return nil, model.NotFound("vm", "vm", name)
	}
	return v, nil
}

func (s *Service) retentionOf(vm string) Retention {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r, ok := s.retention[vm]; ok {
		return r
	}
	return Retention{ShortTerm: s.cfg.ShortTerm, LongTerm: s.cfg.LongTerm}
}

func (s *Service) handleVMs(w http.ResponseWriter, r *http.Request) {
	out := []VMInfo{}
	for _, name := range s.store.VMs() {
		v, ok := s.store.VM(name)
		if !ok {
			continue
		}
		info := VMInfo{VM: name, LastID: v.LastID(), InitialSyncDone: v.InitialSyncDone(), Points: len(v.List())}
		for _, d := range v.Disks() {
			info.Disks = append(info.Disks, DiskInfo{Key: d.Key, Capacity: d.Capacity})
		}
		rt := s.retentionOf(name)
		info.Retention = Window{ShortTerm: model.Duration(rt.ShortTerm), LongTerm: model.Duration(rt.LongTerm)}
		out = append(out, info)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) handlePoints(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	out := []PointInfo{}
	for _, p := range v.List() {
		out = append(out, PointInfo{ID: p.ID, Time: p.Time, Kind: p.Kind})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleImage streams the raw image of a disk at a point, so a client on
// another host can export it.
func (s *Service) handleImage(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	id, err := strconv.ParseUint(r.PathValue("point"), 10, 64)
	if err != nil {
		writeErr(w, model.Invalid("point", "not a point ID: %q", r.PathValue("point")))
		return
	}
	disk, err := strconv.ParseInt(r.PathValue("disk"), 10, 32)
	if err != nil {
		writeErr(w, model.Invalid("disk", "not a disk key: %q", r.PathValue("disk")))
		return
	}
	pr, err := v.OpenPoint(id, int32(disk))
	if err != nil {
		writeErr(w, err)
		return
	}
	defer pr.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(pr.Size(), 10))
	w.WriteHeader(http.StatusOK)
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(w, io.NewSectionReader(pr, 0, pr.Size()), buf); err != nil {
		// Headers are gone; the short body tells the client.
		s.log.Warn("stream image", "vm", v.Name(), "point", id, "disk", disk, "err", err)
	}
}

func (s *Service) handleExport(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var req ExportRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	path, err := s.exportPath(req.Path)
	if err != nil {
		writeErr(w, err)
		return
	}
	if err := v.Export(req.Point, req.Disk, path); err != nil {
		writeErr(w, fmt.Errorf("export point %d disk %d of %s: %w", req.Point, req.Disk, v.Name(), err))
		return
	}
	var size int64
	if fi, err := os.Stat(path); err == nil {
		size = fi.Size()
	}
	writeJSON(w, http.StatusOK, ExportResult{Path: path, Bytes: size})
}

// exportPath accepts only absolute paths, and with ExportDir set only
// paths inside it: the API must not write anywhere on the host.
func (s *Service) exportPath(p string) (string, error) {
	if p == "" || !filepath.IsAbs(p) {
		return "", model.Invalid("path", "must be an absolute path")
	}
	p = filepath.Clean(p)
	if s.cfg.ExportDir != "" {
		dir := filepath.Clean(s.cfg.ExportDir)
		if rel, err := filepath.Rel(dir, p); err != nil || rel == "." || strings.HasPrefix(rel, "..") {
			return "", model.Invalid("path", "must be inside %s", dir)
		}
	}
	return p, nil
}

// served is one point exported over NBD, a read-only export per disk.
type served struct {
	vm      string
	res     ServeResult
	readers []journal.PointReader
	names   []string
	s       *Service
}

func (sv *served) close() {
	for _, n := range sv.names {
		_ = sv.s.nbd.RemoveExport(n)
	}
	for _, r := range sv.readers {
		r.Close()
	}
}

func (s *Service) handleServe(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var req ServeRequest
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	key := fmt.Sprintf("%s/%d", v.Name(), req.Point)
	s.mu.Lock()
	defer s.mu.Unlock()
	if sv, ok := s.served[key]; ok {
		writeJSON(w, http.StatusOK, sv.res)
		return
	}
	sv := &served{s: s, vm: v.Name(), res: ServeResult{Point: req.Point, Exports: []ServedDisk{}}}
	for _, d := range v.Disks() {
		pr, err := v.OpenPoint(req.Point, d.Key)
		if err != nil {
			sv.close()
			writeErr(w, fmt.Errorf("serve point %d of %s: %w", req.Point, v.Name(), err))
			return
		}
		sv.readers = append(sv.readers, pr)
		name := fmt.Sprintf("%s-p%d-d%d", v.Name(), req.Point, d.Key)
		err = s.nbd.AddExport(nbd.Export{Name: name, Description: fmt.Sprintf("%s disk %d at point %d (read-only)", v.Name(), d.Key, req.Point),
			Backend: readOnly{pr}, ReadOnly: true})
		if err != nil {
			sv.close()
			writeErr(w, fmt.Errorf("serve point %d of %s: %w", req.Point, v.Name(), err))
			return
		}
		sv.names = append(sv.names, name)
		sv.res.Exports = append(sv.res.Exports, ServedDisk{Disk: d.Key, Export: name, URI: nbd.URI(s.NBDAddr(), name)})
	}
	s.served[key] = sv
	writeJSON(w, http.StatusOK, sv.res)
}

func (s *Service) handleUnserve(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("vm") + "/" + r.PathValue("point")
	s.mu.Lock()
	sv, ok := s.served[key]
	delete(s.served, key)
	s.mu.Unlock()
	if !ok {
		writeErr(w, model.NotFound("point", "served point", key))
		return
	}
	sv.close()
	w.WriteHeader(http.StatusNoContent)
}

// handleRemove deletes the journal of a VM that is no longer replicated
// here: every restore point and the replica disks this filter keeps for
// it. It is refused (409) while the VM is in this filter's configuration,
// while a session feeds it and while one of its points is being read
// (served over NBD here, or an export or download, which the journal
// refuses); meanwhile a session for it is refused.
func (s *Service) handleRemove(w http.ResponseWriter, r *http.Request) {
	vm := r.PathValue("vm")
	if _, ok := s.store.VM(vm); !ok {
		writeErr(w, model.NotFound("vm", "vm", vm))
		return
	}
	s.mu.Lock()
	var busy string
	switch {
	case s.allowed != nil && s.allowed[vm]:
		busy = "it is still in this filter's configuration (remove it from its policy first)"
	case s.sessions[vm] != nil:
		busy = "a source is replicating it right now"
	case s.removing[vm]:
		busy = "it is being removed"
	default:
		for _, sv := range s.served {
			if sv.vm == vm {
				busy = "a restore point of it is served over NBD (unserve it first)"
				break
			}
		}
	}
	if busy != "" {
		s.mu.Unlock()
		writeErr(w, fmt.Errorf("remove %s: %w: %s", vm, model.ErrConflict, busy))
		return
	}
	s.removing[vm] = true
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.removing, vm)
		s.mu.Unlock()
	}()
	if err := s.store.RemoveVM(vm); err != nil {
		writeErr(w, err)
		return
	}
	// its retention window goes too, on disk as well: a VM replicated
	// again under this name gets the window its configuration gives
	s.mu.Lock()
	if _, ok := s.retention[vm]; ok {
		delete(s.retention, vm)
		if err := s.saveRetentionLocked(); err != nil {
			s.log.Warn("save retention windows after a purge", "vm", vm, "err", err)
		}
	}
	s.mu.Unlock()
	s.log.Info("replica journal removed", "vm", vm)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) handleLongTerm(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	p, err := v.CreateLongTerm(time.Now())
	if err != nil {
		writeErr(w, fmt.Errorf("create long-term point of %s: %w", v.Name(), err))
		return
	}
	writeJSON(w, http.StatusOK, PointInfo{ID: p.ID, Time: p.Time, Kind: p.Kind})
}

func (s *Service) handleRetention(w http.ResponseWriter, r *http.Request) {
	v, err := s.vmOf(r)
	if err != nil {
		writeErr(w, err)
		return
	}
	var req Window
	if err := decodeBody(r, &req); err != nil {
		writeErr(w, err)
		return
	}
	if req.ShortTerm < 0 || req.LongTerm < 0 {
		writeErr(w, model.Invalid("short_term", "retention windows must not be negative"))
		return
	}
	rt := Retention{ShortTerm: req.ShortTerm.D(), LongTerm: req.LongTerm.D()}
	if err := s.SetRetention(map[string]Retention{v.Name(): rt}); err != nil {
		writeErr(w, err)
		return
	}
	writeJSON(w, http.StatusOK, req)
}

// readOnly adapts a point reader to an NBD backend; the server refuses
// writes to a read-only export before they get here.
type readOnly struct{ r journal.PointReader }

var errReadOnly = fmt.Errorf("restore point is read-only: %w", syscall.EPERM)

func (b readOnly) Size() int64 { return b.r.Size() }
func (b readOnly) ReadAt(p []byte, off int64) (int, error) {
	n, err := b.r.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	return n, err
}
func (b readOnly) WriteAt([]byte, int64, bool) error    { return errReadOnly }
func (b readOnly) WriteZeroes(int64, int64, bool) error { return errReadOnly }
func (b readOnly) Trim(int64, int64) error              { return errReadOnly }
func (b readOnly) Flush() error                         { return nil }
