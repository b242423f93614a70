package ova

import (
	"errors"
	"strings"
	"testing"
)

// fakeHypervisor answers backdoor RPCI calls the way VMware's does, so the
// protocol is tested without a VMware VM.
type fakeHypervisor struct {
	t       *testing.T
	vars    map[string]string
	open    bool
	sendLen uint32
	req     []byte
	reply   []byte
	calls   int
}

func (f *fakeHypervisor) call(r *bdRegs) {
	f.calls++
	if r.ax != bdoorMagic || r.dx&0xffff != bdoorPort || r.cx&0xffff != bdoorCmdMsg {
		f.t.Fatalf("bad backdoor call %+v", r)
	}
	typ := r.cx >> 16
	ok := func() { r.cx = msgStatusSuccess << 16 }
	if typ != msgTypeOpen && (!f.open || r.si != 0x1111 || r.di != 0x2222 || r.dx>>16 != 7) {
		f.t.Fatalf("call type %d on a channel not opened or with wrong cookies: %+v", typ, r)
	}
	switch typ {
	case msgTypeOpen:
		if r.bx != rpciProtocol|msgFlagCookie {
			f.t.Fatalf("open with protocol %#x", r.bx)
		}
		f.open = true
		ok()
		r.dx, r.si, r.di = 7<<16, 0x1111, 0x2222
	case msgTypeSendSize:
		f.sendLen, f.req = r.bx, nil
		ok()
	case msgTypeSendPayload:
		for j := 0; j < 4 && uint32(len(f.req)) < f.sendLen; j++ {
			f.req = append(f.req, byte(r.bx>>(8*j)))
		}
		ok()
	case msgTypeRecvSize:
		key, found := strings.CutPrefix(string(f.req), "info-get guestinfo.")
		v, set := f.vars[key]
		switch {
		case !found:
			f.reply = []byte("0 Unknown command")
		case !set:
			f.reply = []byte("0 No value found")
		default:
			f.reply = []byte("1 " + v)
		}
		r.cx = (msgStatusSuccess | msgStatusDoRecv) << 16
		r.dx = msgTypeSendSize << 16
		r.bx = uint32(len(f.reply))
	case msgTypeRecvPayload:
		var w uint32
		for j := 0; j < 4 && len(f.reply) > 0; j++ {
			w |= uint32(f.reply[0]) << (8 * j)
			f.reply = f.reply[1:]
		}
		ok()
		r.dx, r.bx = msgTypeSendPayload<<16, w
	case msgTypeRecvStatus:
		ok()
	case msgTypeClose:
		f.open = false
		ok()
	default:
		f.t.Fatalf("unknown message type %d", typ)
	}
}

func TestGuestInfoOverBackdoor(t *testing.T) {
	env := string(EnvironmentXML(props("role", "coordinator", "node_id", "odd-length-value")))
	hv := &fakeHypervisor{t: t, vars: map[string]string{"ovfEnv": env}}
	got, err := guestInfo(hv, "ovfEnv")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != env {
		t.Fatalf("guestinfo.ovfEnv = %q, want %q", got, env)
	}
	if hv.open {
		t.Error("channel left open")
	}
	parsed, err := ParseEnvironment(strings.NewReader(string(got)))
	if err != nil || parsed.Properties["continuum.node_id"] != "odd-length-value" {
		t.Fatalf("environment from guestinfo = %+v, %v", parsed, err)
	}

	if _, err := guestInfo(hv, "missing"); !errors.Is(err, errGuestInfoUnset) {
		t.Errorf("unset key: err = %v", err)
	}
	if hv.open {
		t.Error("channel left open after an error")
	}
}

func TestGuestInfoFailedOpen(t *testing.T) {
	// Without a hypervisor the port reads all ones or zeros: no success bit
	// in the right place must be taken for a channel.
	if _, err := guestInfo(backdoorFunc(func(r *bdRegs) { *r = bdRegs{} }), "ovfEnv"); err == nil {
		t.Error("open on a dead port succeeded")
	}
}

type backdoorFunc func(r *bdRegs)

func (f backdoorFunc) call(r *bdRegs) { f(r) }

func TestIsVMware(t *testing.T) {
	dir := t.TempDir()
	for vendor, want := range map[string]bool{"VMware, Inc.\n": true, "QEMU\n": false} {
		p := dir + "/sys_vendor"
		if err := writeFileAtomic(p, []byte(vendor), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := isVMware(p); got != want {
			t.Errorf("isVMware(%q) = %v", vendor, got)
		}
	}
	if isVMware(dir + "/absent") {
		t.Error("no DMI data taken for VMware")
	}
}

func TestEnvFileInISORoot(t *testing.T) {
	for _, name := range []string{"ovf-env.xml", "OVF-ENV.XML;1", "ovf_env.xml"} {
		dir := t.TempDir()
		if err := writeFileAtomic(dir+"/"+name, EnvironmentXML(props("role", "proxy")), 0o644); err != nil {
			t.Fatal(err)
		}
		env, err := readEnvDir(dir)
		if err != nil || env.Properties["continuum.role"] != "proxy" {
			t.Errorf("%s: %+v, %v", name, env, err)
		}
	}
	if _, err := readEnvDir(t.TempDir()); !errors.Is(err, ErrNoEnvironment) {
		t.Errorf("empty ISO: err = %v", err)
	}
}
