package ova

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// The appliance's busybox has no ntpd, so time is kept with a small SNTP
// client (RFC 4330): ask each server in turn, step the clock when it is off.

// ntpEpochOffset is the number of seconds from 1900 (NTP) to 1970 (Unix).
const ntpEpochOffset = 2208988800

func toNTP(t time.Time) uint64 {
	secs := uint64(t.Unix() + ntpEpochOffset)
	frac := uint64(t.Nanosecond()) << 32 / 1e9
	return secs<<32 | frac
}

func fromNTP(v uint64) time.Time {
	secs := int64(v>>32) - ntpEpochOffset
	nanos := int64((v & 0xffffffff) * 1e9 >> 32)
	return time.Unix(secs, nanos)
}

// sntpOffset asks one server and returns how far the local clock is behind
// it (add the result to the local time to get the server's).
func sntpOffset(ctx context.Context, server string, now func() time.Time) (time.Duration, error) {
	addr := server
	if _, _, err := net.SplitHostPort(server); err != nil {
		addr = net.JoinHostPort(server, "123")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "udp", addr)
	if err != nil {
		return 0, fmt.Errorf("sntp %s: %w", server, err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	req := make([]byte, 48)
	req[0] = 0x23 // LI 0, version 4, mode 3 (client)
	t0 := now()
	binary.BigEndian.PutUint64(req[40:], toNTP(t0))
	if _, err := conn.Write(req); err != nil {
		return 0, fmt.Errorf("sntp %s: send: %w", server, err)
	}
	resp := make([]byte, 128)
	n, err := conn.Read(resp)
	t3 := now()
	if err != nil {
		return 0, fmt.Errorf("sntp %s: receive: %w", server, err)
	}
	if n < 48 {
		return 0, fmt.Errorf("sntp %s: short answer of %d bytes", server, n)
	}
	mode, stratum := resp[0]&7, resp[1]
	switch {
	case mode != 4:
		return 0, fmt.Errorf("sntp %s: answer in mode %d, want 4 (server)", server, mode)
	case stratum == 0 || stratum > 15:
		return 0, fmt.Errorf("sntp %s: server unsynchronised (stratum %d)", server, stratum)
	case binary.BigEndian.Uint64(resp[24:]) != binary.BigEndian.Uint64(req[40:]):
		return 0, errors.New("sntp " + server + ": answer does not match the request")
	}
	t1 := fromNTP(binary.BigEndian.Uint64(resp[32:]))
	t2 := fromNTP(binary.BigEndian.Uint64(resp[40:]))
	return (t1.Sub(t0) + t2.Sub(t3)) / 2, nil
}

// keepTime queries the servers every interval and calls step with the
// offset when the clock is off by more than maxOffset.
func keepTime(ctx context.Context, log *slog.Logger, servers []string, interval, maxOffset time.Duration, step func(time.Duration) error) {
	for {
		for _, s := range servers {
			off, err := sntpOffset(ctx, s, time.Now)
			if err != nil {
				log.Warn("time server", "server", s, "err", err)
				continue
			}
			if off > maxOffset || off < -maxOffset {
				if err := step(off); err != nil {
					log.Error("set clock", "offset", off, "err", err)
				} else {
					log.Info("clock stepped", "server", s, "offset", off)
				}
			}
			break
		}
		if !sleepCtx(ctx, interval) {
			return
		}
	}
}
