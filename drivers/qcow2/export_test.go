package qcow2

// CachedL2Tables returns how many L2 tables the cache holds (tests only).
func (d *Driver) CachedL2Tables() int { return d.l2c.len() }
