package blockdev

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
)

// Backing-chain graph primitives: draining, op blockers, switching nodes
// between read-only and read-write, moving edges (backing links, parents
// of a node replaced by another, one overlay's switch to a new backing
// node) and rewriting a header's backing reference, modelled on QEMU's
// bdrv_drain, bdrv_op_block_all, bdrv_reopen_set_read_only,
// bdrv_set_backing_hd, bdrv_replace_node and bdrv_change_backing_file.
// The operations composed of them with QEMU's checks (drop-intermediate,
// change-backing-file, chain walks) are package blockdev/chain's. Every
// function here runs with the graph lock held (the exported ones take the
// *Locked that proves it).

// Drain quiesces the nodes: it waits for their requests in flight and
// holds new ones until the returned function is called (once; later calls
// do nothing). Parents are drained before children, so that a parent's
// request that recurses into a child can finish. Drains nest and may
// overlap: a node stays drained until its last drain ends. When a drain
// adds an ancestor of a node drained already, that node is let go for a
// moment and drained again after the ancestor, which is the only order
// that cannot deadlock. Requests the caller itself issues to a drained
// node wait too, so a caller drains the nodes it changes, not the ones
// it still reads or writes through. Caller holds the graph lock, also
// when it calls the returned function.
func (lk *Locked) Drain(nodes ...*Node) (undrain func()) {
	g := lk.g
	// Jobs using the nodes, or nodes above them, pause for the drained
	// section, as QEMU's do (before the nodes are locked, so that a job
	// in I/O on them reaches its pause point).
	endJobs := g.pauseJobs(nodes)
	return g.lockIO(nodes, endJobs)
}

// DrainAll is QEMU's bdrv_drain_all, which a transaction (and every
// command QEMU runs as one) does before its actions: every job pauses
// and every request in flight finishes, and all go on at once.
func (lk *Locked) DrainAll() {
	lk.Drain(lk.Nodes()...)()
}

// pauseJobs is the part of a drain that pauses the jobs using nodes or
// nodes above them; the returned function resumes them.
func (g *Graph) pauseJobs(nodes []*Node) (endJobs func()) {
	rec := &drainRecord{nodes: slices.Clone(nodes)}
	seen := map[DrainNotifier]bool{}
	for _, n := range nodes {
		if n != nil {
			n.jobsAbove(seen, &rec.notifiers, map[*Node]bool{})
		}
	}
	for _, d := range rec.notifiers {
		d.DrainBegin()
	}
	g.drains = append(g.drains, rec)
	endJobs = func() {
		if i := slices.Index(g.drains, rec); i >= 0 {
			g.drains = slices.Delete(g.drains, i, i+1)
		}
		// Nearest first, as the graph is now; then any whose edge has
		// gone meanwhile.
		var order []DrainNotifier
		seen := map[DrainNotifier]bool{}
		for _, n := range rec.nodes {
			if n != nil {
				n.jobsAbove(seen, &order, map[*Node]bool{})
			}
		}
		ended := map[DrainNotifier]bool{}
		for _, d := range order {
			if slices.Contains(rec.notifiers, d) {
				ended[d] = true
				d.DrainEnd()
			}
		}
		for _, d := range rec.notifiers {
			if !ended[d] {
				d.DrainEnd()
			}
		}
	}
	return endJobs
}

// lockIO is the part of a drain that holds the nodes' I/O back; the
// returned function lets it go and then calls endJobs.
func (g *Graph) lockIO(nodes []*Node, endJobs func()) (undrain func()) {
	var fresh []*Node
	for _, n := range nodes {
		if n == nil || slices.Contains(fresh, n) {
			continue
		}
		if n.drains == 0 {
			fresh = append(fresh, n)
		}
		n.drains++
	}
	if len(fresh) > 0 {
		// Nodes drained already below a fresh one are released and
		// locked again in order.
		var relock []*Node
		for d := range g.drained {
			for _, f := range fresh {
				if f != d && reaches(f, d) {
					relock = append(relock, d)
					break
				}
			}
		}
		relock = topoOrder(relock)
		for i := len(relock) - 1; i >= 0; i-- {
			relock[i].io.Unlock()
		}
		if g.drained == nil {
			g.drained = map[*Node]struct{}{}
		}
		for _, n := range topoOrder(append(fresh, relock...)) {
			n.io.Lock()
			g.drained[n] = struct{}{}
		}
	}
	held := slices.Clone(nodes)
	var once sync.Once
	return func() {
		once.Do(func() {
			defer endJobs()
			seen := map[*Node]bool{}
			var done []*Node
			for _, n := range held {
				if n == nil || seen[n] {
					continue
				}
				seen[n] = true
				if n.drains--; n.drains == 0 {
					done = append(done, n)
				}
			}
			done = topoOrder(done)
			for i := len(done) - 1; i >= 0; i-- {
				delete(g.drained, done[i])
				done[i].io.Unlock()
			}
		})
	}
}

// DrainNotifier is told of the drained sections of the node its edge is
// on and of the nodes below it: a block job pauses for them, as QEMU's do
// (the JOB_STATUS_CHANGE of the pause and the resume included).
type DrainNotifier interface {
	DrainBegin()
	DrainEnd()
}

// drainRecord is one drained section: the nodes it drains and the jobs it
// paused (jobs attached meanwhile included).
type drainRecord struct {
	nodes     []*Node
	notifiers []DrainNotifier
}

// jobsAbove collects the drain notifiers of the job edges on n and on the
// nodes above it, nearest first.
func (n *Node) jobsAbove(seen map[DrainNotifier]bool, out *[]DrainNotifier, visited map[*Node]bool) {
	if visited[n] {
		return
	}
	visited[n] = true
	for _, c := range n.Parents() {
		if c.drainer != nil && !seen[c.drainer] {
			seen[c.drainer] = true
			*out = append(*out, c.drainer)
		}
	}
	for _, c := range n.Parents() {
		if c.parent != nil {
			c.parent.jobsAbove(seen, out, visited)
		}
	}
}

// SetDrainNotifier has d told of the drained sections of the edge's node
// and of the nodes below it; sections in progress count at once.
func (lk *Locked) SetDrainNotifier(c *Child, d DrainNotifier) {
	g := lk.g
	c.drainer = d
	n := c.node.Load()
	for _, rec := range g.drains {
		for _, dn := range rec.nodes {
			if dn != nil && reaches(n, dn) && !slices.Contains(rec.notifiers, d) {
				rec.notifiers = append(rec.notifiers, d)
				d.DrainBegin()
				break
			}
		}
	}
}

// reaches tells whether to is a, or lies below a (through any children).
func reaches(a, to *Node) bool {
	if a == to {
		return true
	}
	for _, c := range a.children {
		if reaches(c.node.Load(), to) {
			return true
		}
	}
	return false
}

// topoOrder sorts nodes so that every node comes before the nodes below it.
func topoOrder(nodes []*Node) []*Node {
	want := map[*Node]bool{}
	for _, n := range nodes {
		want[n] = true
	}
	visited := map[*Node]bool{}
	var post []*Node
	var visit func(n *Node)
	visit = func(n *Node) {
		if visited[n] {
			return
		}
		visited[n] = true
		for _, c := range n.children {
			visit(c.node.Load())
		}
		post = append(post, n)
	}
	for _, n := range nodes {
		visit(n)
	}
	out := make([]*Node, 0, len(nodes))
	for i := len(post) - 1; i >= 0; i-- {
		if want[post[i]] {
			out = append(out, post[i])
		}
	}
	return out
}

type blocker struct{ reason error }

// AddBlocker marks the node as used by an operation (a block job) that
// other operations must not disturb; reason is how QEMU words the use, for
// instance "block device is in use by block job: commit". It returns the
// function that removes the mark. Caller holds the graph lock, also when
// it calls the returned function.
func (n *Node) AddBlocker(_ *Locked, reason error) (remove func()) {
	b := &blocker{reason}
	n.blockers = append(n.blockers, b)
	return func() {
		if i := slices.Index(n.blockers, b); i >= 0 {
			n.blockers = slices.Delete(n.blockers, i, i+1)
		}
	}
}

// Blocker returns nil when nothing blocks the node, else QEMU's error for
// the newest blocker: "Node 'X' is busy: <reason>".
func (n *Node) Blocker(_ *Locked) error {
	if len(n.blockers) == 0 {
		return nil
	}
	return fmt.Errorf("Node '%s' is busy: %w", n.name, n.blockers[len(n.blockers)-1].reason)
}

// OpBlocker is Blocker, then the blocker a parent puts on its backing
// node (see opBlocker): what an external snapshot, a mirror target and a
// replaced node check.
func (n *Node) OpBlocker(lk *Locked) error { return n.opBlocker(lk) }

// opBlocker is Blocker, then the blocker a parent puts on its backing
// node: QEMU blocks most operations on a backing node (not commit,
// stream or backup), an external snapshot among them.
func (n *Node) opBlocker(lk *Locked) error {
	if err := n.Blocker(lk); err != nil {
		return err
	}
	// Newest first: QEMU puts each blocker at the head of its list.
	for _, c := range slices.Backward(n.parents) {
		if c.parent != nil && c.role&RoleCOW != 0 && c.name == "backing" {
			return fmt.Errorf("Node '%s' is busy: node is used as backing hd of '%s'", n.name, c.parent.name)
		}
	}
	return nil
}

// reopenSet is n followed by the nodes that inherit their read-only
// setting from it: children (not backing ones) opened inline for it that
// do not set read-only themselves, and theirs in turn (QEMU's
// inherits_from).
func (n *Node) reopenSet() []*Node {
	set := []*Node{n}
	for i := 0; i < len(set); i++ {
		p := set[i]
		for _, c := range p.children {
			cn := c.node.Load()
			if c.role&RoleCOW != 0 || cn.inheritsFrom != p || cn.opts.Has("read-only") || slices.Contains(set, cn) {
				continue
			}
			set = append(set, cn)
		}
	}
	return set
}

// SetReadOnly switches n between read-only and read-write as QEMU's
// bdrv_reopen_set_read_only does: n and the nodes that inherit the setting
// from it are reopened, through their drivers' Reopener when they have
// one, and the permissions below n are worked out again. Drivers prepare
// first (n drained), then the new setting and permissions are checked
// (everything drained), then drivers commit; on any failure everything is
// as before.
func (lk *Locked) SetReadOnly(ctx context.Context, n *Node, readOnly bool) error {
	g := lk.g
	if n.ReadOnly() == readOnly {
		return nil
	}
	set := n.reopenSet()
	undrainTop := lk.Drain(n)
	defer undrainTop()

	states := make([]*ReopenState, 0, len(set))
	abort := func() {
		for i := len(states) - 1; i >= 0; i-- {
			rs := states[i]
			rs.Node.drv.(Reopener).ReopenAbort(rs)
		}
	}
	for _, x := range set {
		r, ok := x.drv.(Reopener)
		if !ok {
			continue
		}
		rs := &ReopenState{Node: x, Options: x.drvOpts, ReadOnly: readOnly, CacheDirect: x.cacheDirect, NoFlush: x.noFlush}
		if err := r.ReopenPrepare(ctx, rs); err != nil {
			abort()
			return err
		}
		states = append(states, rs)
	}

	undrainRest := lk.Drain(set[1:]...)
	defer undrainRest()
	old := make([]bool, len(set))
	for i, x := range set {
		old[i] = x.ReadOnly()
		x.wasWritable = !old[i] && readOnly
		x.readOnly.Store(readOnly)
	}
	tx := newPermTx()
	err := g.refreshPerms(n, tx)
	for _, x := range set {
		x.wasWritable = false
	}
	if err != nil {
		tx.abort()
		for i, x := range set {
			x.readOnly.Store(old[i])
		}
		abort()
		return err
	}
	for i := len(states) - 1; i >= 0; i-- { // children first: file before format
		rs := states[i]
		rs.Node.drv.(Reopener).ReopenCommit(rs)
	}
	tx.apply()
	g.log.Debug().Str("node", n.name).Bool("read-only", readOnly).Msg("node reopened")
	undrainRest()
	undrainTop()
	g.commitPost(ctx, states)
	return nil
}

// edgeMove is a tentative move of edges to other nodes: the structure is
// changed and the permissions checked, but nothing is published until
// commit; revert puts everything back.
type edgeMove struct {
	tx      *permTx
	parents map[*Node][]*Child // the parents lists before the move
	from    map[*Child]*Node
}

// moveEdges points every edge in edges at to (see edgeMove), checking the
// permissions of to with the edges and relaxing those of the nodes they
// leave. On a conflict nothing has changed. Caller holds the graph lock
// and has drained the edges' parents.
func (g *Graph) moveEdges(edges []*Child, to *Node) (*edgeMove, error) {
	m := &edgeMove{tx: newPermTx(), parents: map[*Node][]*Child{}, from: map[*Child]*Node{}}
	save := func(n *Node) {
		if _, ok := m.parents[n]; !ok {
			m.parents[n] = slices.Clone(n.parents)
		}
	}
	save(to)
	var olds []*Node
	for _, c := range edges {
		from := c.node.Load()
		save(from)
		if !slices.Contains(olds, from) {
			olds = append(olds, from)
		}
		m.from[c] = from
		if i := slices.Index(from.parents, c); i >= 0 {
			from.parents = slices.Delete(from.parents, i, i+1)
		}
		to.parents = append(to.parents, c)
		c.node.Store(to)
		m.tx.edges[c] = permPair{c.Perm(), c.Shared()}
	}
	// The nodes left relax first: what they hold below on their own
	// account (through their children) may be what the new edges need.
	var err error
	for _, o := range olds {
		if err == nil {
			err = g.refreshPerms(o, m.tx)
		}
	}
	if err == nil {
		err = g.refreshPerms(to, m.tx)
	}
	if err != nil {
		m.revert()
		return nil, err
	}
	m.refreshLimits()
	return m, nil
}

func (m *edgeMove) revert() {
	m.tx.abort()
	for c, from := range m.from {
		c.node.Store(from)
	}
	for n, ps := range m.parents {
		n.parents = ps
	}
	m.refreshLimits()
}

// refreshLimits refreshes the transfer limits of the moved edges' parents.
func (m *edgeMove) refreshLimits() {
	for c := range m.from {
		if c.parent != nil {
			c.parent.refreshLimits()
		}
	}
}

func (m *edgeMove) commit() { m.tx.apply() }

// AdoptInheritance prepares a drop of the layers from top (past the
// implicit filters above it, as QEMU's bdrv_drop_intermediate takes it)
// down to base: when base was opened inline for that chain, base inherits
// from what top inherited from once top is gone. The returned function
// makes it so (it does nothing otherwise); call it after the drop.
func (lk *Locked) AdoptInheritance(base, top *Node) (apply func()) {
	explicitTop := top
	for explicitTop.implicitFilter && explicitTop.filtered() != nil {
		explicitTop = explicitTop.filtered().node.Load()
	}
	if base == nil || !base.inheritsFromChain(explicitTop) {
		return func() {}
	}
	return func() { base.inheritsFrom = explicitTop.inheritsFrom }
}

// refreshFilenames works out the file names of n and of every node above
// it again, after a change of n's backing link or header.
func (n *Node) refreshFilenames() {
	n.refreshFilename()
	for _, c := range n.parents {
		if c.parent != nil {
			c.parent.refreshFilenames()
		}
	}
}

// SetBacking makes base the backing node of n (nil removes n's backing
// node), as QEMU's bdrv_set_backing_hd: permissions are checked first and
// nothing changes on a conflict or when n's backing link is frozen; n is
// drained around the change. The image header is not touched (see
// RewriteBackingFile). A former backing node that nothing holds any more
// closes.
func (lk *Locked) SetBacking(ctx context.Context, n, base *Node) error {
	g := lk.g
	old := n.backing()
	if old == nil && base == nil || old != nil && old.node.Load() == base {
		return nil
	}
	if old != nil && old.frozen {
		return fmt.Errorf("Cannot change frozen 'backing' link from '%s' to '%s'", n.name, old.node.Load().name)
	}
	if base != nil && reaches(base, n) {
		return fmt.Errorf("Making '%s' a backing child of '%s' would create a cycle", base.name, n.name)
	}
	bu, canUpdate := n.drv.(BackingUpdater)
	if (old == nil || base == nil) && !canUpdate {
		return fmt.Errorf("Driver '%s' of node '%s' does not support backing files", n.drvName, n.name)
	}
	inherit := base != nil && base.inheritsFromChain(n)
	undrain := lk.Drain(n)
	var oldNode *Node
	switch {
	case old != nil && base != nil:
		oldNode = old.node.Load()
		m, err := g.moveEdges([]*Child{old}, base)
		if err != nil {
			undrain()
			return err
		}
		m.commit()
		if canUpdate {
			bu.SetBackingChild(old)
		}
	case base == nil:
		oldNode = old.node.Load()
		g.detach(old)
		bu.SetBackingChild(nil)
	default:
		c, err := g.attach(n, base, "backing", RoleCOW)
		if err != nil {
			undrain()
			return err
		}
		bu.SetBackingChild(c)
	}
	if inherit {
		base.inheritsFrom = n
	}
	n.refreshFilenames()
	undrain()
	if oldNode != nil {
		g.release(oldNode)
	}
	return nil
}

// RewriteBackingFile rewrites the backing file reference in n's image
// header, through its driver's BackingChanger, without reopening n (QEMU's
// bdrv_change_backing_file), and updates the file names of n and the nodes
// above it in the query views; the backing node itself stays. A driver
// without BackingChanger fails with ErrNotSupported. n must be writable
// (package chain's ChangeBackingFile reopens it read-write for this).
func (lk *Locked) RewriteBackingFile(ctx context.Context, n *Node, filename, format string) error {
	bc, ok := n.drv.(BackingChanger)
	if !ok {
		return ErrNotSupported
	}
	if err := bc.ChangeBackingFile(ctx, filename, format); err != nil {
		return err
	}
	n.autoBackingFile = filename
	n.refreshFilenames()
	return nil
}

// SwitchBacking points overlay's backing link at base (nil: removes it)
// and rewrites overlay's header to name filename and format, all or
// nothing: the link moves (permissions checked) before the header is
// rewritten, and a header that cannot be rewritten puts the link back and
// fails with QEMU's "Could not update backing file link: ...". overlay is
// drained around the switch. This is one overlay's step of
// drop-intermediate (package chain); overlay must be writable.
func (lk *Locked) SwitchBacking(ctx context.Context, overlay, base *Node, filename, format string) error {
	g := lk.g
	bu, canUpdate := overlay.drv.(BackingUpdater)
	if base == nil && !canUpdate {
		return fmt.Errorf("Driver '%s' of node '%s' does not support backing files", overlay.drvName, overlay.name)
	}
	undrain := lk.Drain(overlay)
	defer undrain()
	edge := overlay.backing()
	var m *edgeMove
	if base != nil {
		var err error
		if m, err = g.moveEdges([]*Child{edge}, base); err != nil {
			return err
		}
	}
	if err := lk.RewriteBackingFile(ctx, overlay, filename, format); err != nil {
		if m != nil {
			m.revert()
		}
		return fmt.Errorf("Could not update backing file link: %s", Strerror(err))
	}
	if m != nil {
		m.commit()
		if canUpdate {
			bu.SetBackingChild(edge)
		}
	} else {
		g.detach(edge)
		bu.SetBackingChild(nil)
	}
	overlay.refreshFilenames()
	return nil
}

// ReplaceNode moves every parent edge of from (node parents and root users
// such as exports) to to, except the edges in keep and edges whose parent
// is to or lies below it (moving those would make a cycle), as QEMU's
// bdrv_replace_node: used when an active commit pivots to its base.
// Permissions are checked first and nothing changes on a conflict; the
// parents, from and to are drained around the change; a frozen edge
// refuses it. Requests waiting
// for from move to to with their edges. If nothing holds from afterwards,
// it closes.
func (lk *Locked) ReplaceNode(ctx context.Context, from, to *Node, keep ...*Child) error {
	g := lk.g
	if from == to {
		return nil
	}
	if from == nil || to == nil {
		return errors.New("ReplaceNode: missing node")
	}
	var edges []*Child
	drain := []*Node{from, to}
	for _, c := range from.parents {
		// A job's edges stay where they are (QEMU's stay_at_node).
		if slices.Contains(keep, c) || c.job != "" || c.parent != nil && reaches(to, c.parent) {
			continue
		}
		if c.frozen {
			return fmt.Errorf("Cannot change '%s' link to '%s'", c.name, from.name)
		}
		edges = append(edges, c)
		if c.parent != nil {
			drain = append(drain, c.parent)
		}
	}
	if len(edges) == 0 {
		return nil
	}
	undrain := lk.Drain(drain...)
	m, err := g.moveEdges(edges, to)
	if err != nil {
		undrain()
		return err
	}
	m.commit()
	for _, c := range edges {
		if c.parent == nil {
			continue
		}
		if c.role&RoleCOW != 0 {
			if bu, ok := c.parent.drv.(BackingUpdater); ok {
				bu.SetBackingChild(c)
			}
		}
		c.parent.refreshFilenames()
	}
	undrain()
	g.release(from)
	g.log.Debug().Str("from", from.name).Str("to", to.name).Int("edges", len(edges)).Msg("node replaced")
	return nil
}
