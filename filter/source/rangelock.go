package source

import "sync"

// rangeLock serialises overlapping byte ranges of one disk, so that the
// order in which data lands in the file is the order of its sequence
// numbers (guest writes against each other and against sync scans).
type rangeLock struct {
	mu     sync.Mutex
	cond   *sync.Cond
	active []span
}

type span struct{ off, end int64 }

func newRangeLock() *rangeLock {
	l := &rangeLock{}
	l.cond = sync.NewCond(&l.mu)
	return l
}

func (l *rangeLock) overlaps(s span) bool {
	for _, a := range l.active {
		if a.off < s.end && s.off < a.end {
			return true
		}
	}
	return false
}

// Lock waits until no held range overlaps [off, end) and takes it.
func (l *rangeLock) Lock(off, end int64) span {
	s := span{off, end}
	l.mu.Lock()
	for l.overlaps(s) {
		l.cond.Wait()
	}
	l.active = append(l.active, s)
	l.mu.Unlock()
	return s
}

// Unlock releases a range returned by Lock.
func (l *rangeLock) Unlock(s span) {
	l.mu.Lock()
	for i, a := range l.active {
		if a == s {
			l.active[i] = l.active[len(l.active)-1]
			l.active = l.active[:len(l.active)-1]
			break
		}
	}
	l.mu.Unlock()
	l.cond.Broadcast()
}
