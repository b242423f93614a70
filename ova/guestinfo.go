package ova

import (
	"bytes"
	"errors"
	"fmt"
)

// The VMware backdoor: an I/O port the hypervisor traps. A request puts a
// magic number in EAX, a command in ECX and the port in DX; the answer comes
// back in the same registers. The RPCI channel ("message" command) carries
// text requests such as "info-get guestinfo.ovfEnv" four bytes at a time.
const (
	bdoorMagic    = 0x564D5868 // "VMXh"
	bdoorPort     = 0x5658
	bdoorCmdMsg   = 0x1e
	rpciProtocol  = 0x49435052 // "RPCI"
	msgFlagCookie = 0x80000000

	msgTypeOpen        = 0
	msgTypeSendSize    = 1
	msgTypeSendPayload = 2
	msgTypeRecvSize    = 3
	msgTypeRecvPayload = 4
	msgTypeRecvStatus  = 5
	msgTypeClose       = 6

	msgStatusSuccess = 0x0001
	msgStatusDoRecv  = 0x0002
	msgStatusCpt     = 0x0010 // checkpoint: the VM was suspended mid-message

	maxRPCReply = 1 << 20
)

// bdRegs are the registers of one backdoor call, in and out.
type bdRegs struct{ ax, bx, cx, dx, si, di uint32 }

// backdoor performs one low-bandwidth backdoor call.
type backdoor interface{ call(r *bdRegs) }

// rpcChannel is an open RPCI channel.
type rpcChannel struct {
	bd                   backdoor
	id                   uint16
	cookieHigh, cookieLo uint32
}

func (c *rpcChannel) msg(typ uint32, bx uint32) bdRegs {
	r := bdRegs{ax: bdoorMagic, bx: bx, cx: bdoorCmdMsg | typ<<16,
		dx: uint32(c.id)<<16 | bdoorPort, si: c.cookieHigh, di: c.cookieLo}
	c.bd.call(&r)
	return r
}

func openRPC(bd backdoor) (*rpcChannel, error) {
	r := bdRegs{ax: bdoorMagic, bx: rpciProtocol | msgFlagCookie, cx: bdoorCmdMsg | msgTypeOpen<<16, dx: bdoorPort}
	bd.call(&r)
	if (r.cx>>16)&msgStatusSuccess == 0 {
		return nil, fmt.Errorf("open RPCI channel: status %#x", r.cx>>16)
	}
	return &rpcChannel{bd: bd, id: uint16(r.dx >> 16), cookieHigh: r.si, cookieLo: r.di}, nil
}

func (c *rpcChannel) close() { c.msg(msgTypeClose, 0) }

// send transmits one request.
func (c *rpcChannel) send(req []byte) error {
	r := c.msg(msgTypeSendSize, uint32(len(req)))
	if (r.cx>>16)&msgStatusSuccess == 0 {
		return fmt.Errorf("RPCI send size: status %#x", r.cx>>16)
	}
	for i := 0; i < len(req); i += 4 {
		var w uint32
		for j := 0; j < 4 && i+j < len(req); j++ {
			w |= uint32(req[i+j]) << (8 * j)
		}
		r = c.msg(msgTypeSendPayload, w)
		if (r.cx>>16)&msgStatusSuccess == 0 {
			return fmt.Errorf("RPCI send payload: status %#x", r.cx>>16)
		}
	}
	return nil
}

// receive reads one reply.
func (c *rpcChannel) receive() ([]byte, error) {
	r := c.msg(msgTypeRecvSize, 0)
	status := r.cx >> 16
	if status&msgStatusSuccess == 0 {
		return nil, fmt.Errorf("RPCI receive size: status %#x", status)
	}
	if status&msgStatusDoRecv == 0 {
		return nil, nil // empty reply
	}
	if r.dx>>16 != msgTypeSendSize {
		return nil, fmt.Errorf("RPCI receive size: unexpected reply type %d", r.dx>>16)
	}
	size := r.bx
	if size > maxRPCReply {
		return nil, fmt.Errorf("RPCI reply of %d bytes is too large", size)
	}
	out := make([]byte, 0, size)
	for uint32(len(out)) < size {
		r = c.msg(msgTypeRecvPayload, msgStatusSuccess)
		if (r.cx>>16)&msgStatusSuccess == 0 {
			return nil, fmt.Errorf("RPCI receive payload: status %#x", r.cx>>16)
		}
		if r.dx>>16 != msgTypeSendPayload {
			return nil, fmt.Errorf("RPCI receive payload: unexpected reply type %d", r.dx>>16)
		}
		for j := 0; j < 4 && uint32(len(out)) < size; j++ {
			out = append(out, byte(r.bx>>(8*j)))
		}
	}
	r = c.msg(msgTypeRecvStatus, msgStatusSuccess)
	if (r.cx>>16)&msgStatusSuccess == 0 {
		return nil, fmt.Errorf("RPCI receive status: status %#x", r.cx>>16)
	}
	return out, nil
}

// errGuestInfoUnset means the hypervisor has no such guestinfo key (the
// vApp uses the ISO transport, or has no OVF environment at all).
var errGuestInfoUnset = errors.New("guestinfo key not set")

// guestInfo asks the hypervisor for a guestinfo variable over RPCI.
func guestInfo(bd backdoor, key string) ([]byte, error) {
	ch, err := openRPC(bd)
	if err != nil {
		return nil, err
	}
	defer ch.close()
	if err := ch.send([]byte("info-get guestinfo." + key)); err != nil {
		return nil, err
	}
	reply, err := ch.receive()
	if err != nil {
		return nil, err
	}
	// A reply is "1 " and the value on success, "0 " and a reason otherwise.
	if len(reply) >= 2 && bytes.HasPrefix(reply, []byte("1 ")) {
		return reply[2:], nil
	}
	if bytes.HasPrefix(reply, []byte("0")) {
		return nil, fmt.Errorf("guestinfo.%s: %w (%s)", key, errGuestInfoUnset, bytes.TrimSpace(bytes.TrimPrefix(reply, []byte("0"))))
	}
	return nil, fmt.Errorf("guestinfo.%s: unexpected reply %q", key, reply)
}
