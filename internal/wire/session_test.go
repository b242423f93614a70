package wire

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"
)

func TestKeepSessionRetriesUntilCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	done := make(chan struct{})
	go func() {
		KeepSession(ctx, slog.New(slog.DiscardHandler), "peer", func(context.Context) error {
			calls++
			if calls == 3 {
				cancel()
			}
			return errors.New("connection refused")
		})
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("KeepSession did not return after cancel")
	}
	if calls != 3 {
		t.Fatalf("session ran %d times, want 3", calls)
	}
}

func TestGreet(t *testing.T) {
	peer := func(answer Msg) *Conn {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		go func() {
			pc := NewConn(b)
			if _, err := Expect[*Hello](pc); err != nil || answer == nil {
				return // a silent peer: never answers
			}
			_ = pc.Send(answer)
		}()
		return NewConn(a)
	}
	h := &Hello{Role: RoleSourceFilter, VM: "vm-1"}
	ack, err := Greet(peer(&HelloAck{Resume: 42, InitialSyncDone: true}), h, 5*time.Second)
	if err != nil || ack.Resume != 42 || !ack.InitialSyncDone {
		t.Fatalf("ack %+v, err %v", ack, err)
	}
	// A refusal reaches the caller, which decides what it means.
	if ack, err := Greet(peer(&HelloAck{Err: "unknown VM"}), h, 5*time.Second); err != nil || ack.Err != "unknown VM" {
		t.Fatalf("refusal: ack %+v, err %v", ack, err)
	}
	// A peer that never answers: an error once the timeout passes.
	if _, err := Greet(peer(nil), h, 200*time.Millisecond); err == nil {
		t.Fatal("silent peer: no error")
	}
}
