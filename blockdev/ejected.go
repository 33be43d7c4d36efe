package blockdev

import (
	"fmt"
	"syscall"
)

// errEjected fails the requests the block layer answers itself for a
// node whose driver stopped serving it.
var errEjected = fmt.Errorf("No medium found: %w", syscall.ENOMEDIUM)

// ejected tells whether n's driver has stopped serving it.
func (n *Node) ejected() bool {
	e, ok := n.drv.(Ejecter)
	return ok && e.Ejected()
}

// CheckEjected fails query-named-block-nodes as QEMU does when a node
// in the list has lost its driver (the first one, in the list's order).
func (lk *Locked) CheckEjected() error {
	g := lk.g
	for n := g.tail; n != nil; n = n.prev {
		if n.ejected() {
			return fmt.Errorf("Block device %s is ejected", n.name)
		}
	}
	return nil
}
