package controllers

import (
	"testing"
	"time"
)

func TestQueueDeduplicates(t *testing.T) {
	q := newQueue(10*time.Millisecond, 40*time.Millisecond)
	defer q.ShutDown()
	q.Add("a")
	q.Add("b")
	q.Add("a")
	if q.Len() != 2 {
		t.Fatalf("len %d, want 2", q.Len())
	}
	k, _ := q.Get()
	if k != "a" {
		t.Fatalf("got %s first", k)
	}
	q.Add("a") // while processing: queued once more after Done
	q.Add("a")
	if q.Len() != 1 {
		t.Fatalf("a processing key is not queued twice: len %d", q.Len())
	}
	q.Done("a")
	if q.Len() != 2 {
		t.Fatalf("after Done: len %d, want 2", q.Len())
	}
}

func TestQueueBackoff(t *testing.T) {
	q := newQueue(10*time.Millisecond, 40*time.Millisecond)
	defer q.ShutDown()
	var got []time.Duration
	for i := 0; i < 4; i++ {
		got = append(got, q.Backoff("k"))
		k, ok := q.Get()
		if !ok || k != "k" {
			t.Fatalf("backoff %d: %q %v", i, k, ok)
		}
		q.Done(k)
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delays %v, want %v", got, want)
		}
	}
	q.Forget("k")
	if d := q.Backoff("k"); d != 10*time.Millisecond {
		t.Fatalf("after Forget: %s", d)
	}
}

func TestQueueShutDownWakesGet(t *testing.T) {
	q := newQueue(time.Millisecond, time.Millisecond)
	done := make(chan bool)
	go func() { _, ok := q.Get(); done <- ok }()
	q.AddAfter("late", time.Hour)
	q.ShutDown()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("Get returned a key after shutdown")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Get not woken")
	}
}
