package blockdev

// SetRootPerm changes the permissions a user that is not a node (an
// export, a job's backend) holds on its node through c, an edge from
// AttachRoot (QEMU's blk_set_perm). On a conflict nothing changes and
// the error names the users as any other conflict does.
func (lk *Locked) SetRootPerm(c *Child, perm, shared Perm) error {
	g := lk.g
	if c.parent != nil {
		panic("blockdev: SetRootPerm of a node's child")
	}
	tx := newPermTx()
	tx.edges[c] = permPair{perm, shared}
	if err := g.refreshPerms(c.node.Load(), tx); err != nil {
		tx.abort()
		return err
	}
	tx.apply()
	return nil
}
