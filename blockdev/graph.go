package blockdev

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/internal/lockorder"
	"github.com/qbmond/qbmond/keyval"
)

// Graph is the node graph: every open node by name, in opening order, and
// the edges between them. One lock, the graph lock, guards its structure:
// command handlers and a job's graph changes hold it, through Do, whose
// *Locked is the receiver (or an argument) of every operation that needs
// it; I/O does not take it. Its place among qbmond's locks is in package
// lockorder.
type Graph struct {
	mu  lockorder.Mutex[lockorder.Graph]
	log zerolog.Logger

	names      map[string]*Node
	head, tail *Node // opening order, oldest first (QEMU's graph_bdrv_states)
	count      int
	autoSeq    uint64 // counter of auto node-names
	closed     bool
	// drained are the nodes Drain holds. Graph lock.
	drained map[*Node]struct{}
	// drains are the drained sections in progress and the jobs they
	// paused. Graph lock.
	drains []*drainRecord

	// emit sends a QMP event (set by SetEmitter; unset in tests
	// that run without a monitor). Atomic: events come from request
	// paths and from code that holds the graph lock.
	emit atomic.Pointer[func(name string, data any)]
}

// NewGraph returns an empty graph.
func NewGraph(log zerolog.Logger) *Graph {
	return &Graph{log: log, names: map[string]*Node{}}
}

// Locked is the graph lock, held: Graph.Do hands one to its function for
// as long as the lock is held, and the operations that need the lock are
// methods of Locked or take one, so code without the lock cannot call
// them (the accessors of a node's edges that drivers use while the node
// opens, such as Children, Parents and BackingNode, are the exception:
// their doc says the lock must be held). A driver's Open gets it from its
// OpenContext. A Locked is valid only inside the Do that made it; do not
// keep it.
type Locked struct {
	g *Graph
}

// Do runs fn with the graph lock held and returns its error. The lock is
// the innermost of qbmond's locks (package lockorder): fn must not take
// the job manager's or the export manager's lock.
func (g *Graph) Do(fn func(lk *Locked) error) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fn(&Locked{g: g})
}

// WithLock is Do for a function that also returns a value.
func WithLock[T any](g *Graph, fn func(lk *Locked) (T, error)) (T, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return fn(&Locked{g: g})
}

// Graph returns the graph lk locks.
func (lk *Locked) Graph() *Graph { return lk.g }

// Unlocked runs fn with the graph lock released, and takes it again before
// it returns (a job's abort inside a failing transaction, whose clean-up
// takes the lock itself). fn must not use lk.
func (lk *Locked) Unlocked(fn func()) {
	lk.g.mu.Unlock()
	defer lk.g.mu.Lock()
	fn()
}

// held returns the proof of the graph lock for code inside the package
// that runs with it held but was not handed a Locked.
func (g *Graph) held() *Locked { return &Locked{g: g} }

// Lookup returns the open node called name, or nil.
func (lk *Locked) Lookup(name string) *Node {
	g := lk.g
	if n := g.names[name]; n != nil && n.listed {
		return n
	}
	return nil
}

// LookupBS finds a node as QEMU's bdrv_lookup_bs does with a device name
// and a node-name (qbmond has no named block backends, so only the node
// name can match), with QEMU's error.
func (lk *Locked) LookupBS(device, node string) (*Node, error) {
	name := node
	if name == "" {
		name = device
	}
	if n := lk.Lookup(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", device, node)
}

// Release closes n if nothing holds it any more: no monitor reference, no
// parent (an operation that took n out of a chain, such as
// drop-intermediate, lets it go this way).
func (lk *Locked) Release(n *Node) { lk.g.release(n) }

// Log is the graph's logger, for the operations built on the graph.
func (lk *Locked) Log() *zerolog.Logger { return &lk.g.log }

// Find is Lookup with QEMU's error for an unknown node.
func (lk *Locked) Find(name string) (*Node, error) {
	if n := lk.Lookup(name); n != nil {
		return n, nil
	}
	return nil, fmt.Errorf("Failed to find node with node-name='%s'", name)
}

// Nodes returns the open nodes in opening order, oldest first.
func (lk *Locked) Nodes() []*Node {
	g := lk.g
	ns := make([]*Node, 0, g.count)
	for n := g.head; n != nil; n = n.next {
		ns = append(ns, n)
	}
	return ns
}

// Len returns the number of open nodes.
func (lk *Locked) Len() int { return lk.g.count }

func (g *Graph) listAppend(n *Node) {
	n.prev, n.next = g.tail, nil
	if g.tail != nil {
		g.tail.next = n
	} else {
		g.head = n
	}
	g.tail = n
	n.listed = true
	g.count++
}

func (g *Graph) listRemove(n *Node) {
	if !n.listed {
		return
	}
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		g.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		g.tail = n.prev
	}
	n.prev, n.next, n.listed = nil, nil, false
	g.count--
}

// CheckNodeName applies QEMU's node-name rules: a letter first, then
// letters, digits, '-', '.' and '_', at most 31 characters.
func CheckNodeName(name string) error {
	if !keyval.IDWellFormed(name) {
		return fmt.Errorf("Invalid node-name: '%s'", name)
	}
	if len(name) > 31 {
		return errors.New("Node name too long")
	}
	return nil
}

// autoName returns the next "#block" name: a counter followed by two random
// digits, as QEMU's id_generate does (so clients cannot rely on the names).
func (g *Graph) autoName() string {
	for {
		name := fmt.Sprintf("#block%d%02d", g.autoSeq, rand.IntN(100))
		g.autoSeq++
		if _, taken := g.names[name]; !taken {
			return name
		}
	}
}

// openTx records what one blockdev-add opened, so a failure can undo it.
type openTx struct {
	created  []*Node
	attached []*Child
}

// inherited carries the options an inline child takes from its parent
// unless it sets them itself.
type inherited struct {
	readOnly, autoReadOnly, cacheDirect, noFlush bool
	forceShare                                   bool
	discard                                      string
}

// Add opens a tree of nodes from blockdev-add options and gives the monitor
// a reference to its root. It is all-or-nothing: when any node of the tree
// fails to open, every node it opened is closed and every edge it attached
// is detached again.
func (lk *Locked) Add(ctx context.Context, opts Options) (*Node, error) {
	g := lk.g
	if g.closed {
		return nil, errors.New("the block layer is shutting down")
	}
	if !opts.Has("node-name") {
		return nil, errors.New("'node-name' must be specified for the root node")
	}
	tx := &openTx{}
	n, err := g.open(ctx, tx, opts, inherited{})
	if err != nil {
		g.rollback(tx)
		return nil, err
	}
	n.monitor = true
	g.log.Debug().Str("node", n.name).Str("driver", n.drvName).Msg("node added")
	return n, nil
}

var genericOptions = []string{
	"driver", "node-name", "read-only", "auto-read-only", "cache",
	"discard", "detect-zeroes", "force-share",
}

func (g *Graph) open(ctx context.Context, tx *openTx, opts Options, inh inherited) (*Node, error) {
	drvName, _, err := opts.String("driver")
	if err != nil {
		return nil, err
	}
	if drvName == "" {
		return nil, errors.New("Parameter 'driver' is missing")
	}
	factory, err := lookupDriver(drvName)
	if err != nil {
		return nil, err
	}
	name, named, err := opts.String("node-name")
	if err != nil {
		return nil, err
	}
	if named {
		if err := CheckNodeName(name); err != nil {
			return nil, err
		}
		if _, dup := g.names[name]; dup {
			return nil, fmt.Errorf("Duplicate nodes with node-name='%s'", name)
		}
	}

	n := &Node{g: g, name: name, drvName: drvName, opts: opts}
	ro, err := opts.Bool("read-only", inh.readOnly)
	if err != nil {
		return nil, err
	}
	n.readOnly.Store(ro)
	forceShare, err := opts.Bool("force-share", inh.forceShare)
	if err != nil {
		return nil, err
	}
	n.forceShare = forceShare
	if forceShare && !ro {
		return nil, errors.New("force-share=on can only be used with read-only images")
	}
	if n.autoReadOnly, err = opts.Bool("auto-read-only", inh.autoReadOnly); err != nil {
		return nil, err
	}
	n.cacheDirect, n.noFlush = inh.cacheDirect, inh.noFlush
	cache, err := opts.Object("cache")
	if err != nil {
		return nil, err
	}
	if cache != nil {
		if n.cacheDirect, err = cache.Bool("direct", n.cacheDirect); err != nil {
			return nil, err
		}
		if n.noFlush, err = cache.Bool("no-flush", n.noFlush); err != nil {
			return nil, err
		}
	}
	defDiscard := inh.discard
	if defDiscard == "" {
		defDiscard = "ignore"
	}
	if n.discard, err = enumOption(opts, "discard", defDiscard, "ignore", "unmap", "off", "on"); err != nil {
		return nil, err
	}
	switch n.discard {
	case "off":
		n.discard = "ignore"
	case "on":
		n.discard = "unmap"
	}
	if n.detectZeroes, err = enumOption(opts, "detect-zeroes", "off", "off", "on", "unmap"); err != nil {
		return nil, err
	}
	if n.detectZeroes == "unmap" && n.discard != "unmap" {
		return nil, errors.New("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	}

	if !named {
		n.name = g.autoName()
		n.implicit = true
	}
	g.names[n.name] = n
	tx.created = append(tx.created, n)

	n.drvOpts = make(Options, len(opts))
	for k, v := range opts {
		n.drvOpts[k] = v
	}
	for _, k := range genericOptions {
		delete(n.drvOpts, k)
	}
	n.drv = factory()
	n.dbg, _ = n.drv.(DebugEventer)
	if wf, ok := n.drv.(WriteFlagger); ok {
		n.writeFlags = wf.SupportedWriteFlags()
	}
	oc := &OpenContext{g: g, tx: tx, node: n, opts: n.drvOpts}
	if err := n.drv.Open(ctx, oc); err != nil {
		return nil, err
	}
	n.opened = true
	n.align = driverAlignment(n.drv)
	n.refreshLimits()
	if err := n.refreshLength(ctx); err != nil {
		return nil, err
	}
	n.refreshFilename()
	if !n.listed {
		g.listAppend(n)
	}
	return n, nil
}

func enumOption(o Options, key, def string, values ...string) (string, error) {
	s, ok, err := o.String(key)
	if err != nil || !ok {
		return def, err
	}
	for _, v := range values {
		if s == v {
			return s, nil
		}
	}
	return "", fmt.Errorf("Parameter '%s' does not accept value '%s'", key, s)
}

// rollback undoes a failed Add: edges first, newest first, then nodes.
func (g *Graph) rollback(tx *openTx) {
	for i := len(tx.attached) - 1; i >= 0; i-- {
		g.detach(tx.attached[i])
	}
	for i := len(tx.created) - 1; i >= 0; i-- {
		n := tx.created[i]
		n.children = nil
		if n.opened {
			n.closeDriver(context.Background())
		}
		g.listRemove(n)
		delete(g.names, n.name)
	}
}

// OpenContext is what a driver's Open gets: its options and a way to open
// its children within the same all-or-nothing blockdev-add.
type OpenContext struct {
	g    *Graph
	tx   *openTx
	node *Node
	opts Options
}

// Options returns the driver's options (the generic blockdev options such
// as node-name, read-only and cache removed; child definitions included).
func (oc *OpenContext) Options() Options { return oc.opts }

// Graph returns the graph the node opens in.
func (oc *OpenContext) Graph() *Graph { return oc.g }

// Locked returns the graph lock, which is held while a node opens.
func (oc *OpenContext) Locked() *Locked { return oc.g.held() }

// Node returns the node being opened (not yet in the graph).
func (oc *OpenContext) Node() *Node { return oc.node }

// ReadOnly tells whether the node is opened read-only.
func (oc *OpenContext) ReadOnly() bool { return oc.node.ReadOnly() }

// SetReadOnly switches the node being opened to read-only (auto-read-only
// fallbacks).
func (oc *OpenContext) SetReadOnly() { oc.node.readOnly.Store(true) }

// AutoReadOnly tells whether auto-read-only was requested.
func (oc *OpenContext) AutoReadOnly() bool { return oc.node.autoReadOnly }

// CacheDirect tells whether cache.direct is on.
func (oc *OpenContext) CacheDirect() bool { return oc.node.cacheDirect }

// NoFlush tells whether cache.no-flush is on.
func (oc *OpenContext) NoFlush() bool { return oc.node.noFlush }

// OpenChild opens the child defined by the option called name (a
// BlockdevRef: either the node-name of an existing node or an inline
// definition, which becomes an implicit node that closes with its last
// parent) and attaches it with the given role. The permissions of the new
// edge come from the driver's ChildPerm (or DefaultChildPerm); a conflict
// with the node's other users fails before anything changes.
func (oc *OpenContext) OpenChild(ctx context.Context, name string, role Role) (*Child, error) {
	v, ok := oc.opts[name]
	if !ok {
		return nil, fmt.Errorf("A block device must be specified for \"%s\"", name)
	}
	parent := oc.node
	// QEMU opens a node's "file" child before the node itself is listed
	// and the children its driver opens (blkdebug's image, a qcow2 data
	// file) after.
	if name != "file" && !parent.listed {
		oc.g.listAppend(parent)
	}
	inh := inherited{
		readOnly:     parent.ReadOnly(),
		autoReadOnly: parent.autoReadOnly,
		cacheDirect:  parent.cacheDirect,
		noFlush:      parent.noFlush,
		forceShare:   parent.forceShare,
	}
	if role&RoleCOW == 0 {
		inh.discard = parent.discard
	}
	return oc.openRef(ctx, name, v, role, inh)
}

// openRef opens (or looks up) the BlockdevRef v and attaches it as the
// child called name.
func (oc *OpenContext) openRef(ctx context.Context, name string, v any, role Role, inh inherited) (*Child, error) {
	child, err := oc.g.held().resolveRef(ctx, oc.tx, name, v, inh)
	if err != nil {
		return nil, err
	}
	if _, byName := v.(string); !byName {
		child.inheritsFrom = oc.node
	}
	c, err := oc.g.attach(oc.node, child, name, role)
	if err != nil {
		return nil, err
	}
	oc.tx.attached = append(oc.tx.attached, c)
	return c, nil
}

// resolveRef finds the node a BlockdevRef under key name names: an
// existing node by its name, or a new implicit node opened (within tx)
// from an inline definition.
func (lk *Locked) resolveRef(ctx context.Context, tx *openTx, name string, v any, inh inherited) (*Node, error) {
	g := lk.g
	switch ref := v.(type) {
	case string:
		n := lk.Lookup(ref)
		if n == nil {
			return nil, fmt.Errorf("Cannot find device='%s' nor node-name='%s'", ref, ref)
		}
		return n, nil
	case map[string]any:
		return g.open(ctx, tx, Options(ref), inh)
	case Options:
		return g.open(ctx, tx, ref, inh)
	}
	return nil, fmt.Errorf("Invalid parameter type for '%s', expected: BlockdevRef", name)
}

// OpenBacking opens a format node's backing node and attaches it as its
// "backing" child (the COW role), as QEMU does after the format driver has
// read its header. The "backing" option decides:
//
//   - null: no backing node (nil, nil);
//   - a node-name: that node, as it is;
//   - an inline definition: a new implicit node, read-only unless the
//     definition says otherwise;
//   - absent: the file the image names (filename; "" for none), relative
//     to the directory of the image's own file unless absolute, opened as
//     a read-only implicit format node of the given format ("" probes the
//     file's contents) over an implicit file node.
//
// Backing nodes inherit cache.direct and cache.no-flush, not discard.
func (oc *OpenContext) OpenBacking(ctx context.Context, filename, format string) (*Child, error) {
	parent := oc.node
	inh := inherited{
		readOnly:    true,
		cacheDirect: parent.cacheDirect,
		noFlush:     parent.noFlush,
		forceShare:  parent.forceShare,
	}
	// QEMU lists a format node before its backing chain (the backing
	// file opens after the node itself), but after its file child.
	if !parent.listed {
		oc.g.listAppend(parent)
	}
	parent.autoBackingFile = filename
	v, given := oc.opts["backing"]
	switch {
	case given && v == nil:
		return nil, nil
	case given:
		return oc.openRef(ctx, "backing", v, RoleCOW, inh)
	case filename == "":
		return nil, nil
	}
	path := filename
	if base := oc.imageFilename(); base != "" && !strings.HasPrefix(base, "json:") {
		path = combinePath(base, filename)
	}
	if strings.HasPrefix(path, "json:") {
		return nil, fmt.Errorf("Could not open backing file: json: backing file names are not supported")
	}
	if format == "" {
		var err error
		if format, err = probeFormat(path); err != nil {
			return nil, fmt.Errorf("Could not open backing file: %w", err)
		}
	}
	def := Options{"driver": format, "file": map[string]any{"driver": "file", "filename": path}}
	c, err := oc.openRef(ctx, "backing", def, RoleCOW, inh)
	if err != nil {
		return nil, fmt.Errorf("Could not open backing file: %w", err)
	}
	// A backing node opened from the image's own record is what the
	// image says, whatever its file name looks like.
	parent.autoBackingFile = c.node.Load().filename
	return c, nil
}

// combinePath resolves name relative to the directory of base, without
// cleaning the result ("dir/../x" stays so), as QEMU names backing files.
func combinePath(base, name string) string {
	if filepath.IsAbs(name) || strings.HasPrefix(name, "json:") {
		return name
	}
	if i := strings.LastIndexByte(base, '/'); i >= 0 {
		return base[:i+1] + name
	}
	return name
}

// imageFilename is the file name of the node's primary child, which a
// relative backing file name is relative to.
func (oc *OpenContext) imageFilename() string {
	for _, c := range oc.node.children {
		if c.role&RolePrimary != 0 {
			return c.node.Load().Filename()
		}
	}
	return ""
}

// attach adds the edge parent -name-> child after checking permissions.
func (g *Graph) attach(parent, child *Node, name string, role Role) (*Child, error) {
	c := &Child{name: name, role: role, parent: parent}
	c.node.Store(child)
	perm, shared := parent.cumulative(nil)
	p, s := parent.childPerm(c, perm, shared)
	if err := g.addEdge(c, p, s); err != nil {
		return nil, err
	}
	parent.children = append(parent.children, c)
	parent.refreshLimits()
	return c, nil
}

// AttachRoot gives a user that is not a node (an export, a job, a test) an
// edge to n with the given permissions. user names it in permission errors
// as QEMU names the parent: a BlockBackend (an export's, a job's main
// one, blockdev-create's) has no name in QSD, "an unnamed block device";
// a named one would be "block device 'x'".
func (lk *Locked) AttachRoot(n *Node, user string, perm, shared Perm) (*Child, error) {
	g := lk.g
	return g.attachUser(n, user, "root", "", perm, shared)
}

// AttachJob gives the job called id an edge to n under the name role
// ("main node", "intermediate node", ...), as QEMU's block_job_add_bdrv;
// user names the job in permission errors ("commit job 'j0'"), and
// x-debug-query-block-graph shows the edge from a "block-job" vertex.
// DetachRoot removes the edge.
func (lk *Locked) AttachJob(n *Node, id, user, role string, perm, shared Perm) (*Child, error) {
	g := lk.g
	return g.attachUser(n, user, role, id, perm, shared)
}

func (g *Graph) attachUser(n *Node, user, name, job string, perm, shared Perm) (*Child, error) {
	c := &Child{name: name, role: RoleData | RoleMetadata | RolePrimary, user: user, job: job}
	c.node.Store(n)
	if err := g.addEdge(c, perm, shared); err != nil {
		return nil, err
	}
	return c, nil
}

// DetachRoot removes an edge AttachRoot created; the node stays if
// something else holds it, and closes otherwise.
func (lk *Locked) DetachRoot(c *Child) {
	g := lk.g
	if c.parent != nil {
		panic("blockdev: DetachRoot of a node's child")
	}
	g.detach(c)
	g.release(c.node.Load())
}

// RemoveBackend is DetachRoot as QEMU's blk_remove_bs does it for an
// export: the node's I/O is drained, then the edge goes in a drained
// section of its own (a job on the node pauses for each), then the node
// closes if nothing else holds it.
func (lk *Locked) RemoveBackend(c *Child) {
	g := lk.g
	if c.parent != nil {
		panic("blockdev: RemoveBackend of a node's child")
	}
	n := c.node.Load()
	lk.Drain(n)()
	undrain := lk.Drain(n)
	g.detach(c)
	undrain()
	g.release(n)
}

// addEdge links c into its node's parents with the given permissions, or
// fails without changing anything.
func (g *Graph) addEdge(c *Child, perm, shared Perm) error {
	n := c.node.Load()
	n.parents = append(n.parents, c)
	tx := newPermTx()
	tx.edges[c] = permPair{perm, shared}
	if err := g.refreshPerms(n, tx); err != nil {
		tx.abort()
		n.parents = n.parents[:len(n.parents)-1]
		return err
	}
	tx.apply()
	return nil
}

// detach unlinks c from its node's parents and its parent's children and
// relaxes the permissions below.
func (g *Graph) detach(c *Child) {
	n := c.node.Load()
	for i, p := range n.parents {
		if p == c {
			n.parents = append(n.parents[:i], n.parents[i+1:]...)
			break
		}
	}
	if c.parent != nil {
		ch := c.parent.children
		for i, p := range ch {
			if p == c {
				c.parent.children = append(ch[:i], ch[i+1:]...)
				break
			}
		}
		c.parent.refreshLimits()
	}
	tx := newPermTx()
	_ = g.refreshPerms(n, tx) // relaxing cannot conflict
	tx.apply()
}

// Delete drops the monitor's reference to a node (blockdev-del): the node
// and the implicit children only it held close.
func (lk *Locked) Delete(ctx context.Context, name string) error {
	g := lk.g
	n, err := lk.Find(name)
	if err != nil {
		return err
	}
	for _, c := range n.parents {
		// A BlockBackend holds it (an export, a job's I/O backend);
		// a job's own edge to a node is not one (QEMU's
		// block_job_add_bdrv), its blocker answers below.
		if c.parent == nil && c.job == "" {
			return fmt.Errorf("Node %s is in use", name)
		}
	}
	if err := n.opBlocker(lk); err != nil {
		return err
	}
	if !n.monitor {
		return fmt.Errorf("Node %s is not owned by the monitor", name)
	}
	if len(n.parents) > 0 {
		return fmt.Errorf("Block device %s is in use", name)
	}
	n.monitor = false
	g.release(n)
	g.log.Debug().Str("node", name).Msg("node deleted")
	return nil
}

// release closes n if nothing holds it any more, then its children.
func (g *Graph) release(n *Node) {
	if n.monitor || len(n.parents) > 0 || !n.listed {
		return
	}
	if err := n.closeDriver(context.Background()); err != nil {
		g.log.Warn().Str("node", n.name).Err(err).Msg("closing node")
	}
	g.listRemove(n)
	delete(g.names, n.name)
	children := n.children
	n.children = nil
	for i := len(children) - 1; i >= 0; i-- {
		c := children[i]
		g.detach(c)
		g.release(c.node.Load())
	}
}

// closeDriver waits for requests in flight, flushes and closes the driver.
func (n *Node) closeDriver(ctx context.Context) error {
	n.io.Lock()
	defer n.io.Unlock()
	if n.closed {
		return nil
	}
	n.closed = true
	n.unfreezeOwn()
	var ferr error
	// A filter keeps nothing of its own to flush (and its child may be
	// in a drained section of whoever takes the filter away).
	if !n.noFlush && !n.ReadOnly() && !n.isFilter() {
		ferr = n.drv.Flush(ctx)
	}
	return errors.Join(ferr, n.drv.Close())
}

// Close flushes and closes every node, parents before children (quit,
// SIGTERM). It takes the graph lock itself. The graph accepts no new nodes
// afterwards; requests still holding a Child get ErrClosed.
func (g *Graph) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	var errs []error
	// Parents close before the nodes below them, whatever order the
	// list has them in (a blkdebug node is listed before its image).
	var all []*Node
	for n := g.tail; n != nil; n = n.prev {
		all = append(all, n)
	}
	for _, n := range topoOrder(all) {
		if err := n.closeDriver(context.Background()); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.name, err))
		}
		g.listRemove(n)
		delete(g.names, n.name)
	}
	return errors.Join(errs...)
}
