package watch

import (
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestQueueNeverTwoWorkersOnOneKeyAndCoalesces: many producers add a few
// keys over and over while eight workers take them; no key is ever held
// by two workers, a key added while held is handed out again, and a key
// added many times before a worker takes it is handed out once.
func TestQueueNeverTwoWorkersOnOneKeyAndCoalesces(t *testing.T) {
	q := newQueue()
	const keys = 4
	var holding [keys]atomic.Int32
	var handed [keys]atomic.Int32
	var overlap atomic.Int32
	var workers sync.WaitGroup
	for range 8 {
		workers.Go(func() {
			for {
				k, ok := q.get()
				if !ok {
					return
				}
				var i int
				fmt.Sscanf(k, "k%d", &i)
				if holding[i].Add(1) > 1 {
					overlap.Add(1)
				}
				handed[i].Add(1)
				time.Sleep(time.Millisecond)
				holding[i].Add(-1)
				q.done(k)
			}
		})
	}
	var producers sync.WaitGroup
	for p := range 16 {
		producers.Go(func() {
			for n := range 200 {
				q.add(fmt.Sprintf("k%d", (p+n)%keys))
			}
		})
	}
	producers.Wait()
	// Every key is handed out at least once after the last add.
	deadline := time.Now().Add(5 * time.Second)
	for q.length() > 0 || q.busy() {
		if time.Now().After(deadline) {
			t.Fatal("the queue did not drain")
		}
		time.Sleep(time.Millisecond)
	}
	q.shutdown()
	workers.Wait()
	if overlap.Load() > 0 {
		t.Errorf("a key was held by two workers at once %d times", overlap.Load())
	}
	total := 0
	for i := range keys {
		total += int(handed[i].Load())
		if handed[i].Load() == 0 {
			t.Errorf("k%d never handed out", i)
		}
	}
	if total >= 16*200 {
		t.Errorf("%d hand-outs for %d adds: nothing coalesced", total, 16*200)
	}

	// Added three times before a worker is there: handed out once.
	q = newQueue()
	q.add("a")
	q.add("a")
	q.add("a")
	if k, ok := q.get(); !ok || k != "a" || q.length() != 0 {
		t.Fatalf("get = %q, %v; %d still queued", k, ok, q.length())
	}
	// Added while held: queued again only when done.
	q.add("a")
	if q.length() != 0 {
		t.Fatal("a key held by a worker was queued again")
	}
	q.done("a")
	if q.length() != 1 {
		t.Fatal("a key added while held was not queued again when done")
	}
	if dropped := q.shutdown(); len(dropped) != 1 || dropped[0] != "a" {
		t.Errorf("shutdown dropped %v, want [a]", dropped)
	}
	if _, ok := q.get(); ok {
		t.Error("get after shutdown handed out a key")
	}
}
