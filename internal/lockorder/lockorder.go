// Package lockorder is the one place where qbmond's long-lived locks are
// ranked. A goroutine takes them outer first, in this order, and never an
// outer one while it holds an inner one:
//
//  1. the job manager's control lock (jobs.Manager: job commands, the
//     processing of a finished body, transactions), which job hooks hold
//     while they take the graph lock;
//  2. the export manager's lock (exports.Manager: block-export-add/-del,
//     nbd-server-*), held while an export attaches to or leaves a node;
//  3. the graph lock (blockdev.Graph, held through blockdev.Locked by
//     Graph.Do), innermost: code holding it calls neither job commands
//     nor export commands.
//
// The job control lock and the export lock are never held together; they
// are ranked only so that the order is total.
//
// Two locks of one rank may nest when they are different locks (a private
// graph opened while the daemon's graph lock is held, to create an image).
//
// Each of these locks is a Mutex whose type names its rank. Built with the
// lockcheck tag (make test does), every Lock checks the locks the calling
// goroutine already holds and panics when it holds one of a higher rank,
// or this very lock (which would deadlock); without the tag a Mutex is a
// sync.Mutex and the checks compile to nothing.
package lockorder

import "sync"

// Rank orders the locks: a lower rank is taken first.
type Rank interface {
	rank() int
	name() string
}

// JobControl is the job manager's control lock.
type JobControl struct{}

// Exports is the export manager's lock.
type Exports struct{}

// Graph is the graph lock.
type Graph struct{}

func (JobControl) rank() int    { return 1 }
func (JobControl) name() string { return "job control lock" }
func (Exports) rank() int       { return 2 }
func (Exports) name() string    { return "export lock" }
func (Graph) rank() int         { return 3 }
func (Graph) name() string      { return "graph lock" }

// Mutex is a sync.Mutex with the rank R. The zero value is unlocked.
type Mutex[R Rank] struct {
	mu sync.Mutex
}
