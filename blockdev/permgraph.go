package blockdev

import (
	"errors"
	"fmt"
)

// permTx holds the tentative permissions of the edges a graph change
// touches. Nothing is stored on the edges until every node below the change
// has been checked; then apply publishes them (and abort forgets them).
// Drivers that hold permissions outside the process (PermLocker: file
// locks) are asked along the way and told the outcome.
type permTx struct {
	edges   map[*Child]permPair
	lockers map[*Node]permPair
}

type permPair struct{ perm, shared Perm }

func newPermTx() *permTx {
	return &permTx{edges: map[*Child]permPair{}, lockers: map[*Node]permPair{}}
}

func (tx *permTx) apply() {
	for c, p := range tx.edges {
		c.perm.Store(uint64(p.perm))
		c.shared.Store(uint64(p.shared))
	}
	for n, p := range tx.lockers {
		n.drv.(PermLocker).SetPerm(p.perm, p.shared)
	}
}

func (tx *permTx) abort() {
	for n := range tx.lockers {
		n.drv.(PermLocker).AbortPerm()
	}
}

// perms returns c's permissions, tentative ones first.
func (c *Child) perms(tx *permTx) (Perm, Perm) {
	if tx != nil {
		if p, ok := tx.edges[c]; ok {
			return p.perm, p.shared
		}
	}
	return c.Perm(), c.Shared()
}

// cumulative returns what n's users hold together and let others hold.
func (n *Node) cumulative(tx *permTx) (perm, shared Perm) {
	shared = PermAll
	for _, c := range n.parents {
		p, s := c.perms(tx)
		perm |= p
		shared &= s
	}
	return perm, shared
}

// childPerm asks the driver (or QEMU's defaults) what n needs on c.
// A force-share child is shared entirely (QEMU's bdrv_child_perm).
func (n *Node) childPerm(c *Child, perm, shared Perm) (Perm, Perm) {
	var p, s Perm
	if cp, ok := n.drv.(ChildPermer); ok {
		p, s = cp.ChildPerm(c, c.role, perm, shared)
	} else {
		p, s = DefaultChildPerm(c.role, !n.ReadOnly(), perm, shared)
	}
	if c.node.Load().forceShare {
		s = PermAll
	}
	return p, s
}

// refreshPerms recomputes, into tx, the permissions of every edge below n
// after n's parent edges changed, checking each node on the way. It stops at
// the first conflict.
func (g *Graph) refreshPerms(n *Node, tx *permTx) error {
	if err := n.checkParents(tx); err != nil {
		return err
	}
	perm, shared := n.cumulative(tx)
	if perm&(PermWrite|PermWriteUnchanged) != 0 && n.ReadOnly() {
		if n.wasWritable {
			return fmt.Errorf("Read-only block node '%s' cannot support read-write users", n.name)
		}
		return errors.New("Block node is read-only")
	}
	if l, ok := n.drv.(PermLocker); ok && n.opened {
		if err := l.CheckPerm(perm, shared); err != nil {
			return err
		}
		tx.lockers[n] = permPair{perm, shared}
	}
	for _, c := range n.children {
		p, s := n.childPerm(c, perm, shared)
		if op, os := c.perms(tx); op == p && os == s {
			continue
		}
		tx.edges[c] = permPair{p, s}
		if err := g.refreshPerms(c.node.Load(), tx); err != nil {
			return err
		}
	}
	return nil
}

// checkParents checks that no user of n holds a permission another user of
// n does not share. Only pairs with a changed edge are checked, so a node
// with many users costs O(users) per change. The conflict reported is the
// one QEMU finds first: it walks the users newest first, asking of each
// whether it tolerates every other.
func (n *Node) checkParents(tx *permTx) error {
	ps := n.parents
	last := len(ps) - 1
	bestA, bestB := -1, -1 // positions in newest-first order
	consider := func(a, b int) {
		if a == b {
			return
		}
		_, as := ps[a].perms(tx)
		bp, _ := ps[b].perms(tx)
		if bp&^as == 0 {
			return
		}
		pa, pb := last-a, last-b
		if bestA < 0 || pa < bestA || pa == bestA && pb < bestB {
			bestA, bestB = pa, pb
		}
	}
	for i, c := range ps {
		if _, changed := tx.edges[c]; !changed {
			continue
		}
		for j := range ps {
			consider(i, j)
			consider(j, i)
		}
	}
	if bestA < 0 {
		return nil
	}
	a, b := ps[last-bestA], ps[last-bestB]
	_, as := a.perms(tx)
	bp, _ := b.perms(tx)
	return fmt.Errorf("Permission conflict on node '%s': permissions '%s' are both required by %s (uses node '%s' as '%s' child) and unshared by %s (uses node '%s' as '%s' child).",
		n.name, bp&^as, b.parentDesc(), n.name, b.name, a.parentDesc(), n.name, a.name)
}
