package ova

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"
)

// fakeNTPServer answers with a clock skew ahead of the local one.
func fakeNTPServer(t *testing.T, skew time.Duration, stratum byte) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 128)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if n < 48 {
				continue
			}
			resp := make([]byte, 48)
			resp[0] = 0x24 // version 4, mode 4
			resp[1] = stratum
			copy(resp[24:32], buf[40:48])
			now := toNTP(time.Now().Add(skew))
			binary.BigEndian.PutUint64(resp[32:], now)
			binary.BigEndian.PutUint64(resp[40:], now)
			_, _ = pc.WriteTo(resp, from)
		}
	}()
	return pc.LocalAddr().String()
}

func TestSNTPOffset(t *testing.T) {
	for _, skew := range []time.Duration{0, 90 * time.Second, -3 * time.Hour} {
		off, err := sntpOffset(context.Background(), fakeNTPServer(t, skew, 2), time.Now)
		if err != nil {
			t.Fatal(err)
		}
		if d := off - skew; d > time.Second || d < -time.Second {
			t.Errorf("skew %v: offset %v", skew, off)
		}
	}
	if _, err := sntpOffset(context.Background(), fakeNTPServer(t, 0, 0), time.Now); err == nil {
		t.Error("unsynchronised server accepted")
	}
}

func TestNTPTimestampRoundTrip(t *testing.T) {
	in := time.Date(2026, 11, 23, 20, 0, 0, 123456789, time.UTC)
	if out := fromNTP(toNTP(in)); out.Sub(in).Abs() > time.Microsecond {
		t.Errorf("round trip %v -> %v", in, out)
	}
}

func TestKeepTimeSteps(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stepped time.Duration
	servers := []string{"127.0.0.1:1", fakeNTPServer(t, time.Hour, 3)} // the first one fails
	keepTimeDone := make(chan struct{})
	go func() {
		keepTime(ctx, consoleLogger(testWriter{t}), servers, time.Hour, time.Second, func(d time.Duration) error {
			stepped = d
			cancel()
			return nil
		})
		close(keepTimeDone)
	}()
	select {
	case <-keepTimeDone:
	case <-time.After(20 * time.Second):
		t.Fatal("keepTime did not step the clock")
	}
	if d := stepped - time.Hour; d.Abs() > time.Second {
		t.Errorf("stepped by %v, want about 1h", stepped)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
