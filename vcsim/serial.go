package vcsim

import (
	"bytes"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/types"
)

// Under the race detector the simulator's tasks run one at a time. In
// govmomi v0.56.0 tasks on different VMs share state without a common lock:
// a disk reconfiguration updates a datastore's free space under the
// datastore's lock while another VM's reconfiguration copies the same
// datastore unlocked (Datastore.resolve), and SearchIndex.FindByUuid reads
// every VM's config while a CreateVM task fills in a new one. Those are
// races in the test double, not in the code under test, and they would
// fail any test that configures several VMs at once. Outside the race
// detector (the lab, and a plain test run) tasks stay concurrent, as in
// vCenter.

var (
	soapMethodRe = regexp.MustCompile(`<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)`)
	taskRefRe    = regexp.MustCompile(`<returnval[^>]*type="Task"[^>]*>([^<]+)</returnval>`)
)

// soapMethod is the name of the call in a SOAP request body.
func soapMethod(body []byte) string {
	m := soapMethodRe.FindSubmatch(body)
	if m == nil {
		return ""
	}
	return string(m[1])
}

// serialSDK serves the vSphere API with every task, from its call to its
// end, and every SearchIndex lookup running alone.
func serialSDK(svc *simulator.Service, reg *simulator.Registry) http.HandlerFunc {
	var mu sync.Mutex
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		_ = r.Body.Close()
		if err != nil {
			http.Error(w, "read request: "+err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		name := soapMethod(body)
		switch {
		case strings.HasSuffix(name, "_Task"):
			mu.Lock()
			defer mu.Unlock()
			tw := &teeWriter{ResponseWriter: w}
			svc.ServeSDK(tw, r)
			if m := taskRefRe.FindSubmatch(tw.buf.Bytes()); m != nil {
				ref := types.ManagedObjectReference{Type: "Task", Value: string(m[1])}
				if t, ok := reg.Get(ref).(*simulator.Task); ok {
					t.Wait()
				}
			}
		case strings.HasPrefix(name, "FindBy") || strings.HasPrefix(name, "FindAllBy"):
			mu.Lock()
			defer mu.Unlock()
			svc.ServeSDK(w, r)
		default:
			svc.ServeSDK(w, r)
		}
	}
}

// teeWriter keeps a copy of the response body it passes on.
type teeWriter struct {
	http.ResponseWriter
	buf bytes.Buffer
}

func (t *teeWriter) Write(p []byte) (int, error) {
	t.buf.Write(p)
	return t.ResponseWriter.Write(p)
}
