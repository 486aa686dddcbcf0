package engine

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// sharedRead is a read that many callers need (a base's manifest or
// config): one caller reads, the others wait for its answer. In a batch a
// failed read is not the end: it is tried again (one attempt shared by the
// callers, each attempt with the full retry budget of a request), and only
// a second failure in a row is final, so that a base that cannot be read
// fails the batch's remaining images at once, with the same error. A single
// rebase keeps its first answer.
type sharedRead[T any] struct {
	mu       sync.Mutex
	running  chan struct{} // closed when the attempt under way ends
	done     bool          // val or err is final
	val      T
	err      error
	failures int
}

// Failed attempts in a row that make a shared read's failure final.
const (
	singleAttempts = 1
	batchAttempts  = 2
)

// get returns the value, reading it with read when no attempt is under
// way; a failure is final after attempts failed attempts in a row.
func (s *sharedRead[T]) get(ctx context.Context, attempts int, read func() (T, error)) (T, error) {
	for {
		s.mu.Lock()
		if s.done {
			v, err := s.val, s.err
			s.mu.Unlock()
			return v, err
		}
		if ch := s.running; ch != nil {
			s.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				var zero T
				return zero, ctx.Err()
			}
			continue // done, or failed and to be tried again
		}
		ch := make(chan struct{})
		s.running = ch
		s.mu.Unlock()

		v, err := read()
		s.mu.Lock()
		s.running = nil
		switch {
		case err == nil:
			s.done, s.val = true, v
		case ctx.Err() != nil:
			// Cut short by the caller's own end: not the base's failure.
		default:
			s.failures++
			if s.failures >= attempts {
				s.done, s.err = true, err
			}
		}
		done := s.done
		s.mu.Unlock()
		close(ch)
		if done || ctx.Err() != nil {
			return v, err
		}
	}
}

// BaseReadError is the failure, in a batch, of a read shared by the
// batch's images: a base's manifest or config. Every image that needs that
// base fails with the same BaseReadError.
type BaseReadError struct {
	// Ref names the base.
	Ref string
	// Err is the cause.
	Err error
}

// Error says that the base could not be read.
func (e *BaseReadError) Error() string {
	return fmt.Sprintf("the base %s could not be read: %v", e.Ref, e.Err)
}

// Unwrap returns the cause.
func (e *BaseReadError) Unwrap() error { return e.Err }

// baseErr marks err as the failure of a base read shared by a batch.
func (r *run) baseErr(ref string, err error) error {
	if err == nil || !r.batch() {
		return err
	}
	return baseReadError(ref, err)
}

// baseReadError wraps err as the failure to read the base ref, unless it is
// one already or the run's own end.
func baseReadError(ref string, err error) error {
	var be *BaseReadError
	if errors.As(err, &be) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &BaseReadError{Ref: ref, Err: err}
}
