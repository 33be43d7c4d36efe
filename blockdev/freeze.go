package blockdev

import "fmt"

// Frozen links, as QEMU's bdrv_freeze_backing_chain: a job that relies on
// the shape of a chain freezes the links from a node down to (not
// including the links of) another, each node's filtered or backing child;
// a frozen link cannot be pointed elsewhere (blockdev-reopen, a backing
// change, a node replaced under it) until the job lets go. Links to a
// node marked never-freeze (the filters commit and mirror put into a
// chain, which must stay removable) cannot be frozen at all. Every
// function here runs with the graph lock held (the exported ones take the
// *Locked that proves it).

// SetNeverFreeze marks n as a node links to which may never be frozen
// (QEMU's never_freeze, set on commit_top and mirror_top).
func (n *Node) SetNeverFreeze(_ *Locked) { n.neverFreeze = true }

// chainLinks returns the filtered-or-backing links from top down to, not
// including, base's own (all of them when base is nil or not met).
func chainLinks(top, base *Node) []*Child {
	var out []*Child
	for it := top; it != nil && it != base; {
		c := it.filterOrCOW()
		if c == nil {
			break
		}
		out = append(out, c)
		it = c.node.Load()
	}
	return out
}

// ChainFrozen returns QEMU's error when a link from top down to base is
// frozen (bdrv_is_backing_chain_frozen), else nil.
func ChainFrozen(_ *Locked, top, base *Node) error {
	for _, c := range chainLinks(top, base) {
		if c.frozen {
			return fmt.Errorf("Cannot change '%s' link from '%s' to '%s'", c.name, c.parent.name, c.node.Load().name)
		}
	}
	return nil
}

// FreezeChain freezes the links from top down to base (see above). When
// one is frozen already, or leads to a never-freeze node, nothing is
// frozen and QEMU's error comes back. The returned function unfreezes
// exactly the links it froze (once). Graph lock held, also when it is
// called.
func (lk *Locked) FreezeChain(top, base *Node) (unfreeze func(), err error) {
	links, err := freezeLinks(lk, top, base)
	if err != nil {
		return nil, err
	}
	done := false
	return func() {
		if !done {
			done = true
			thaw(links)
		}
	}, nil
}

func freezeLinks(lk *Locked, top, base *Node) ([]*Child, error) {
	if err := ChainFrozen(lk, top, base); err != nil {
		return nil, err
	}
	links := chainLinks(top, base)
	for _, c := range links {
		if c.node.Load().neverFreeze {
			return nil, fmt.Errorf("Cannot freeze '%s' link to '%s'", c.name, c.node.Load().name)
		}
	}
	for _, c := range links {
		c.frozen = true
	}
	return links, nil
}

func thaw(links []*Child) {
	for _, c := range links {
		c.frozen = false
	}
}

// FreezeChain freezes the links from the node being opened down to base
// for as long as the node is open, or until it is taken out as a filter
// (QEMU's copy-on-read filter with a bottom node).
func (oc *OpenContext) FreezeChain(base *Node) error {
	links, err := freezeLinks(oc.Locked(), oc.node, base)
	if err != nil {
		return err
	}
	oc.node.ownFrozen = append(oc.node.ownFrozen, links...)
	return nil
}

// unfreezeOwn lets go of the links the node froze for itself.
func (n *Node) unfreezeOwn() {
	thaw(n.ownFrozen)
	n.ownFrozen = nil
}
