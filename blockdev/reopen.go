package blockdev

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// blockdev-reopen (QEMU's qmp_blockdev_reopen and bdrv_reopen_multiple):
// every node listed, and the children that inherit from it, reopen with
// new options as one transaction.
//
//   - A listed node's options are complete: what is left out goes back to
//     its default. The driver and node-name cannot change (an implicit
//     node cannot be named at all); "backing" is a node-name or null and
//     may be left out only when the node has no backing file; "file" may
//     name another node; read-only, auto-read-only, cache.direct,
//     cache.no-flush, detect-zeroes and discard change, and so do the
//     driver options each driver takes on reopen. Driver options left out
//     must be ones the driver can reset; every other option must be given
//     again unchanged. A node listed twice takes the union of its
//     options, the later ones winning.
//   - A child opened inline for its parent reopens too: with inline
//     options given for it (its defaults inheriting the parent's new
//     read-only, auto-read-only and cache settings, a backing child being
//     read-only), or, when the parent names it, with its own options, its
//     current settings and what the parent sets explicitly.
//
// Every node prepares (drivers check and open what they need; nothing
// visible changes), then the new settings and links are put in place and
// the permissions of everything they touch are worked out again; any
// failure undoes all of it and the drivers abort, so that every node is
// exactly as it was. On success the drivers commit, children first.

// genericSettings are the block layer's own options of a node.
type genericSettings struct {
	readOnly, autoReadOnly bool
	cacheDirect, noFlush   bool
	forceShare             bool
	discard                string
}

func (n *Node) genericSettings() genericSettings {
	return genericSettings{n.ReadOnly(), n.autoReadOnly, n.cacheDirect, n.noFlush, n.forceShare, n.discard}
}

// reopenEntry is one node of a reopen queue.
type reopenEntry struct {
	n    *Node
	opts Options // the node's new options, generic ones included
	genericSettings
	detectZeroes string

	backingSet  bool  // the options name a new backing node (or none)
	backing     *Node // nil: none
	fileSet     bool
	file        *Node
	drvOpts     Options
	rs          *ReopenState
	prepared    bool
	undoBacking func()
	undoFile    func()
}

// Reopen is blockdev-reopen: options is the list of BlockdevOptions, one
// per node to reopen.
func (lk *Locked) Reopen(ctx context.Context, options []map[string]any) error {
	g := lk.g
	if len(options) == 0 {
		return nil // nothing to do (QEMU 7.2 aborts on an empty list)
	}
	listed, merged, err := lk.reopenListed(options)
	if err != nil {
		return err
	}
	// Jobs on the listed nodes' subtrees, and above them, pause for the
	// whole command, failed or not (QEMU drains each subtree first).
	defer g.pauseJobs(subtrees(listed))()
	queue, err := g.reopenQueue(listed, merged)
	if err != nil {
		return err
	}
	r := newReopenTx(lk, queue)
	released := false
	defer func() {
		if !released {
			r.release()
		}
	}()
	if err := r.prepare(ctx); err != nil {
		return r.abort(err)
	}
	tx, err := r.switchOver(ctx)
	if err != nil {
		return r.abort(err)
	}
	r.commit(ctx, tx)
	released = true
	r.release()
	states := make([]*ReopenState, 0, len(queue))
	for _, e := range queue {
		if e.prepared {
			states = append(states, e.rs)
		}
	}
	g.commitPost(ctx, states)
	return nil
}

// commitPost tells the drivers that are ReopenPosters, children first as
// they committed, that their reopen is done.
func (g *Graph) commitPost(ctx context.Context, states []*ReopenState) {
	for i := len(states) - 1; i >= 0; i-- {
		rs := states[i]
		if p, ok := rs.Node.drv.(ReopenPoster); ok {
			if err := p.ReopenCommitPost(ctx, rs); err != nil {
				g.log.Error().Err(err).Str("node", rs.Node.name).Msg("after reopen")
			}
		}
	}
}

// reopenListed finds the nodes options names, in the order listed; a node
// listed more than once takes the union of its options (merged).
func (lk *Locked) reopenListed(options []map[string]any) (listed []*Node, merged map[*Node]Options, err error) {
	merged = map[*Node]Options{}
	for _, o := range options {
		name, given := o["node-name"].(string)
		if !given {
			return nil, nil, errors.New("node-name not specified")
		}
		n := lk.Lookup(name)
		if n == nil {
			return nil, nil, fmt.Errorf("Failed to find node with node-name='%s'", name)
		}
		if prev, ok := merged[n]; ok {
			merged[n] = mergeOptions(prev, o)
			continue
		}
		listed = append(listed, n)
		merged[n] = Options(o)
	}
	return listed, merged, nil
}

// subtrees is every node below (and including) the nodes, each once.
func subtrees(nodes []*Node) []*Node {
	var all []*Node
	for _, n := range nodes {
		for _, x := range n.subtree() {
			if !slices.Contains(all, x) {
				all = append(all, x)
			}
		}
	}
	return all
}

// reopenQueue is the reopen queue of the listed nodes and the children
// that reopen with them, parents before children.
func (g *Graph) reopenQueue(listed []*Node, merged map[*Node]Options) ([]*reopenEntry, error) {
	var queue []*reopenEntry
	for _, n := range listed {
		if i := queueIndex(queue, n); i >= 0 {
			// Reached as an inheriting child of a node listed before:
			// its own listing wins.
			queue = append(queue[:i], queue[i+1:]...)
		}
		if err := g.queueReopen(&queue, n, merged[n], nil, 0, false); err != nil {
			return nil, err
		}
	}
	return parentsFirst(queue), nil
}

// parentsFirst orders queue so that no entry comes after a node below it:
// a node prepares drained, while its driver may still do I/O on its
// children, which drain in their turn. The order is stable: each time the
// first node that nothing left is above.
func parentsFirst(queue []*reopenEntry) []*reopenEntry {
	var nodes []*Node
	for _, e := range queue {
		nodes = append(nodes, e.n)
	}
	byNode := map[*Node]*reopenEntry{}
	for _, e := range queue {
		byNode[e.n] = e
	}
	queue = queue[:0]
	for len(nodes) > 0 {
		for i, n := range nodes {
			if !slices.ContainsFunc(nodes, func(m *Node) bool { return m != n && reaches(m, n) }) {
				queue = append(queue, byNode[n])
				nodes = slices.Delete(nodes, i, i+1)
				break
			}
		}
	}
	return queue
}

// reopenTx is one blockdev-reopen in progress over its ordered queue:
// prepare, then switchOver, then commit; abort undoes whatever of the
// first two was done, release ends the drains and holds either way.
type reopenTx struct {
	lk    *Locked
	g     *Graph
	queue []*reopenEntry
	// old are the queue's settings before the reopen, by index.
	old []genericSettings
	// flagsSet: switchOver has changed the nodes' read-only flags.
	flagsSet bool
	// undrains end the drains prepare began, in order.
	undrains []func()
	// holds keep nodes that might leave the graph (a former backing or
	// file node) open until the end, so that a failure can put them
	// back.
	holds []*Child
}

func newReopenTx(lk *Locked, queue []*reopenEntry) *reopenTx {
	r := &reopenTx{lk: lk, g: lk.g, queue: queue, old: make([]genericSettings, len(queue))}
	for i, e := range queue {
		r.old[i] = e.n.genericSettings()
	}
	return r
}

// release lets the held nodes go, then ends the drains, last first.
func (r *reopenTx) release() {
	for _, h := range r.holds {
		r.lk.DetachRoot(h)
	}
	for i := len(r.undrains) - 1; i >= 0; i-- {
		r.undrains[i]()
	}
}

// prepare drains each node in turn and has its driver check and open what
// the new options need; nothing visible changes yet.
func (r *reopenTx) prepare(ctx context.Context) error {
	for _, e := range r.queue {
		r.undrains = append(r.undrains, r.lk.Drain(e.n))
		if err := r.lk.prepareReopen(ctx, e); err != nil {
			return err
		}
	}
	return nil
}

// switchOver puts the new read-only flags and links (backing, file) in
// place and works out the permissions of everything they touch. The
// returned permission transaction is applied by commit.
func (r *reopenTx) switchOver(ctx context.Context) (*permTx, error) {
	g, lk := r.g, r.lk
	r.flagsSet = true
	for _, e := range r.queue {
		e.n.wasWritable = !e.n.ReadOnly() && e.readOnly
		e.n.readOnly.Store(e.readOnly)
	}
	for _, e := range r.queue {
		n := e.n
		if e.backingSet {
			var ob *Node
			if b := n.backing(); b != nil {
				ob = b.node.Load()
				h, err := lk.AttachRoot(ob, "reopen", 0, PermAll)
				if err != nil {
					return nil, err
				}
				r.holds = append(r.holds, h)
			}
			restore := keepInheritsFrom(e.backing)
			if err := lk.SetBacking(ctx, n, e.backing); err != nil {
				restore()
				return nil, err
			}
			e.undoBacking = func() {
				_ = lk.SetBacking(ctx, n, ob)
				restore()
			}
		}
		if e.fileSet {
			c := n.Child("file")
			of := c.node.Load()
			h, err := lk.AttachRoot(of, "reopen", 0, PermAll)
			if err != nil {
				return nil, err
			}
			r.holds = append(r.holds, h)
			m, err := g.moveEdges([]*Child{c}, e.file)
			if err != nil {
				return nil, err
			}
			m.commit()
			restore := keepInheritsFrom(e.file)
			if e.file.inheritsFromChain(n) {
				e.file.inheritsFrom = n // as a new backing node does
			}
			n.refreshFilenames()
			e.undoFile = func() {
				if m, err := g.moveEdges([]*Child{c}, of); err == nil {
					m.commit()
					n.refreshFilenames()
				}
				restore()
			}
		}
	}
	tx := newPermTx()
	for _, e := range r.queue {
		if err := g.refreshPerms(e.n, tx); err != nil {
			tx.abort()
			return nil, err
		}
	}
	return tx, nil
}

// commit has the drivers commit, children first as QEMU, applies the new
// permissions and takes the new generic settings into the nodes.
func (r *reopenTx) commit(ctx context.Context, tx *permTx) {
	g := r.g
	for i := len(r.queue) - 1; i >= 0; i-- {
		if e := r.queue[i]; e.prepared {
			e.n.drv.(Reopener).ReopenCommit(e.rs)
		}
	}
	tx.apply()
	for _, e := range r.queue {
		n := e.n
		n.wasWritable = false
		n.autoReadOnly, n.discard = e.autoReadOnly, e.discard
		n.cacheDirect, n.noFlush = e.cacheDirect, e.noFlush
		n.detectZeroes = e.detectZeroes
		n.opts = e.opts
		n.drvOpts = e.drvOpts
		n.align = driverAlignment(n.drv)
		n.refreshLimits()
		if err := n.refreshLength(ctx); err != nil {
			g.log.Warn().Err(err).Str("node", n.name).Msg("length after reopen")
		}
		for _, b := range n.bitmaps.Load() {
			if b.H.persistent {
				b.H.readOnly = e.readOnly
			}
		}
	}
	for _, e := range r.queue {
		e.n.refreshFilenames()
	}
	g.log.Debug().Int("nodes", len(r.queue)).Msg("nodes reopened")
}

// abort undoes what prepare and switchOver did, so that every node is
// exactly as it was: the read-only flags, the links (last first), the
// permissions, and the drivers that prepared abort. It returns err.
func (r *reopenTx) abort(err error) error {
	if r.flagsSet {
		for i, e := range r.queue {
			e.n.readOnly.Store(r.old[i].readOnly)
			e.n.wasWritable = false
		}
	}
	for i := len(r.queue) - 1; i >= 0; i-- {
		e := r.queue[i]
		if e.undoFile != nil {
			e.undoFile()
		}
		if e.undoBacking != nil {
			e.undoBacking()
		}
	}
	if r.flagsSet {
		// Permissions as they were (the links moved back already
		// worked out theirs).
		tx := newPermTx()
		ok := true
		for _, e := range r.queue {
			if r.g.refreshPerms(e.n, tx) != nil {
				ok = false
				break
			}
		}
		if ok {
			tx.apply()
		} else {
			tx.abort()
		}
	}
	for i := len(r.queue) - 1; i >= 0; i-- {
		if e := r.queue[i]; e.prepared {
			e.n.drv.(Reopener).ReopenAbort(e.rs)
		}
	}
	return err
}

func queueIndex(queue []*reopenEntry, n *Node) int {
	for i, e := range queue {
		if e.n == n {
			return i
		}
	}
	return -1
}

// mergeOptions is a with b's members over it, objects merged member by
// member.
func mergeOptions(a, b map[string]any) Options {
	out := make(Options, len(a)+len(b))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		am, aIsMap := out[k].(map[string]any)
		bm, bIsMap := v.(map[string]any)
		if aIsMap && bIsMap {
			out[k] = map[string]any(mergeOptions(am, bm))
			continue
		}
		out[k] = v
	}
	return out
}

// queueReopen adds n with opts to the queue, its generic settings worked
// out, then the children that inherit from n (QEMU's
// bdrv_reopen_queue_child). parent is the entry n inherits from, through
// an edge of the given role; keepOld tells that the parent named n, which
// then keeps its own options and current settings except for what the
// parent sets explicitly.
func (g *Graph) queueReopen(queue *[]*reopenEntry, n *Node, opts Options, parent *reopenEntry, role Role, keepOld bool) error {
	if i := queueIndex(*queue, n); i >= 0 {
		return fmt.Errorf("Node '%s' is reopened twice", n.name)
	}
	// The defaults of the generic settings.
	inh := genericSettings{discard: "ignore"}
	cow := role&RoleCOW != 0
	switch {
	case parent == nil:
	case keepOld:
		inh = n.genericSettings()
		pc, _ := parent.opts.Object("cache")
		if parent.opts.Has("read-only") {
			inh.readOnly = parent.readOnly
		}
		if parent.opts.Has("auto-read-only") {
			inh.autoReadOnly = parent.autoReadOnly
		}
		if pc.Has("direct") {
			inh.cacheDirect = parent.cacheDirect
		}
		if pc.Has("no-flush") {
			inh.noFlush = parent.noFlush
		}
		if cow {
			inh.readOnly, inh.autoReadOnly = true, false
		}
	default:
		inh = parent.genericSettings
		if cow {
			inh.readOnly, inh.autoReadOnly, inh.discard = true, false, "ignore"
		}
	}
	e := &reopenEntry{n: n, opts: opts}
	if err := e.parseGeneric(inh); err != nil {
		return err
	}
	*queue = append(*queue, e)
	for _, c := range n.children {
		cn := c.node.Load()
		if cn.inheritsFrom != n {
			continue
		}
		v, given := opts[c.name]
		switch ref := v.(type) {
		case string:
			if ref != cn.name {
				continue // another node: a link change, not a reopen
			}
			if err := g.queueReopen(queue, cn, cn.opts.Clone(), e, c.role, true); err != nil {
				return err
			}
		case map[string]any:
			if err := g.queueReopen(queue, cn, Options(ref), e, c.role, false); err != nil {
				return err
			}
		default:
			if given {
				continue // null: no child
			}
			if err := g.queueReopen(queue, cn, Options{"driver": cn.drvName}, e, c.role, false); err != nil {
				return err
			}
		}
	}
	return nil
}

// parseGeneric works out the entry's generic settings from its options
// and the defaults inh.
func (e *reopenEntry) parseGeneric(inh genericSettings) error {
	o := e.opts
	var err error
	if e.readOnly, err = o.Bool("read-only", inh.readOnly); err != nil {
		return err
	}
	if e.autoReadOnly, err = o.Bool("auto-read-only", inh.autoReadOnly); err != nil {
		return err
	}
	cache, err := o.Object("cache")
	if err != nil {
		return err
	}
	if e.cacheDirect, err = cache.Bool("direct", inh.cacheDirect); err != nil {
		return err
	}
	if e.noFlush, err = cache.Bool("no-flush", inh.noFlush); err != nil {
		return err
	}
	if e.discard, err = enumOption(o, "discard", inh.discard, "ignore", "unmap", "off", "on"); err != nil {
		return err
	}
	switch e.discard {
	case "off":
		e.discard = "ignore"
	case "on":
		e.discard = "unmap"
	}
	if e.detectZeroes, err = enumOption(o, "detect-zeroes", "off", "off", "on", "unmap"); err != nil {
		return err
	}
	if e.detectZeroes == "unmap" && e.discard != "unmap" {
		return errors.New("setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	}
	fs, err := o.Bool("force-share", inh.forceShare)
	if err != nil {
		return err
	}
	e.forceShare = fs
	return nil
}

// prepareReopen checks one node's new links and driver options and has
// its driver prepare (QEMU's bdrv_reopen_prepare). Nothing visible
// changes.
func (lk *Locked) prepareReopen(ctx context.Context, e *reopenEntry) error {
	n, o := e.n, e.opts
	e.drvOpts = make(Options, len(o))
	for k, v := range o {
		e.drvOpts[k] = v
	}
	for _, k := range genericOptions {
		delete(e.drvOpts, k)
	}
	r, ok := n.drv.(Reopener)
	if !ok {
		return fmt.Errorf("Block format '%s' used by node '%s' does not support reopening files", n.drvName, n.name)
	}
	var changeable, resettable []string
	if or, ok := n.drv.(OptionReopener); ok {
		changeable, resettable = or.ReopenOptions()
	}
	// A key under a child's name ("backing", "file.driver") is never one
	// of the node's own options: QEMU takes the child options out of a
	// node's options once the child is open.
	isChild := func(k string) bool {
		first, _, _ := strings.Cut(k, ".")
		return n.Child(first) != nil || first == "backing" || first == "file"
	}
	// Options left out go back to their defaults, if they may. QEMU
	// walks the node's current options in its dictionary's order and
	// names the first that may not.
	newFlat, oldFlat := flattenOptions(e.drvOpts), flattenOptions(n.drvOpts)
	if n.opts.Has("force-share") {
		// force-share never changes: QEMU refuses it left out, and
		// given again as well (below).
		oldFlat["force-share"] = n.opts["force-share"]
		if o.Has("force-share") {
			newFlat["force-share"] = o["force-share"]
		}
	}
	for _, k := range qdictOrder(sortedKeys(oldFlat)) {
		if _, kept := newFlat[k]; kept || isChild(k) {
			continue
		}
		if !coveredBy(k, resettable) {
			return fmt.Errorf("Option '%s' cannot be reset to its default value", k)
		}
	}
	e.rs = &ReopenState{Node: n, Options: e.drvOpts, ReadOnly: e.readOnly, CacheDirect: e.cacheDirect, NoFlush: e.noFlush}
	if err := r.ReopenPrepare(ctx, e.rs); err != nil {
		return err
	}
	e.prepared = true
	if _, ok := n.drv.(BackingUpdater); ok && !o.Has("backing") && (n.backing() != nil || n.autoBackingFile != "") {
		return fmt.Errorf("backing is missing for '%s'", n.name)
	}
	for _, name := range []string{"backing", "file"} {
		if v, ok := o[name]; ok {
			if err := lk.reopenLink(e, name, v); err != nil {
				return err
			}
		}
	}
	// Everything else stays as it is. Child references may name the
	// current child; inline options of a child opened for this node
	// belong to the child's entry, while those of any other child stay
	// among this node's options (as "backing.driver", ...), where they
	// can only differ. QEMU checks what is left in its dictionary's
	// order and names the first option that changed.
	type leftover struct {
		val    any
		fixed  bool // compared below, not with the old options
		differ bool
	}
	left := map[string]leftover{}
	for _, k := range []string{"driver", "node-name", "force-share"} {
		if !o.Has(k) {
			continue
		}
		var differ bool
		switch k {
		case "driver":
			drv, _, _ := o.String(k)
			differ = drv != n.drvName
		case "node-name":
			// An implicit node's name is not one of its options.
			name, _, _ := o.String(k)
			differ = n.implicit || name != n.name
		case "force-share":
			// QEMU compares its own string form of the option with the
			// typed value it was opened with: never equal.
			differ = true
		}
		left[k] = leftover{fixed: true, differ: differ}
	}
	for k, v := range e.drvOpts {
		c := n.Child(k)
		if ref, isRef := v.(string); isRef && c != nil && ref == c.node.Load().name {
			continue
		}
		if _, inline := v.(map[string]any); inline && c != nil && c.node.Load().inheritsFrom == n {
			continue
		}
		if _, inline := v.(map[string]any); !inline && (k == "backing" || k == "file") {
			continue // links, checked above
		}
		for fk, fv := range flattenOptions(Options{k: v}) {
			if !coveredBy(fk, changeable) {
				left[fk] = leftover{val: fv}
			}
		}
	}
	for _, k := range qdictOrder(sortedKeys(left)) {
		l := left[k]
		if l.fixed {
			if l.differ {
				return fmt.Errorf("Cannot change the option '%s'", k)
			}
			continue
		}
		if ov, ok := oldFlat[k]; !ok || isChild(k) || !reflect.DeepEqual(l.val, ov) {
			return fmt.Errorf("Cannot change the option '%s'", k)
		}
	}
	return nil
}

// reopenLink checks a change of the backing or file link to v (a
// node-name; null for backing: none; inline options: the same child) and
// records it.
func (lk *Locked) reopenLink(e *reopenEntry, name string, v any) error {
	n := e.n
	var target *Node
	switch ref := v.(type) {
	case nil:
	case string:
		if target = lk.Lookup(ref); target == nil {
			return fmt.Errorf("Cannot find device='' nor node-name='%s'", ref)
		}
	case map[string]any:
		// Inline options: those of a child opened for n reopen it; any
		// others are left among n's options, where they cannot match.
		return nil
	default:
		return fmt.Errorf("Invalid parameter type for '%s', expected: BlockdevRef", name)
	}
	var cur *Node
	if c := n.Child(name); c != nil {
		cur = c.node.Load()
	}
	if cur == target {
		return nil
	}
	if target != nil && reaches(target, n) {
		return fmt.Errorf("Making '%s' a %s child of '%s' would create a cycle", target.name, name, n.name)
	}
	if cur != nil {
		if cur.implicitFilter && cur.SkipFilters() == target {
			return nil
		}
		if cur.implicitFilter {
			return fmt.Errorf("Cannot replace implicit %s child of %s", name, n.name)
		}
	}
	if n.isFilter() && cur == nil {
		return fmt.Errorf("'%s' is a %s filter node that does not support a %s child", n.name, n.drvName, name)
	}
	if c := n.Child(name); c != nil && c.frozen {
		return fmt.Errorf("Cannot change frozen '%s' link from '%s' to '%s'", name, n.name, cur.name)
	}
	if name == "backing" {
		if _, ok := n.drv.(BackingUpdater); !ok && !n.isFilter() {
			return fmt.Errorf("Driver '%s' of node '%s' does not support backing files", n.drvName, n.name)
		}
		e.backingSet, e.backing = true, target
		return nil
	}
	if target == nil {
		return errors.New("Invalid parameter type for 'file', expected: BlockdevRef")
	}
	if n.Child("file") == nil {
		return errors.New("Cannot set file child to format node without file child")
	}
	e.fileSet, e.file = true, target
	return nil
}

// flattenOptions turns nested objects and lists into dotted keys
// ("inject-error.0.event"), as QEMU compares options, with values made
// comparable whatever their origin (json.Number, Go numbers, keyval
// strings stay what they are).
func flattenOptions(o Options) map[string]any {
	out := map[string]any{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch x := v.(type) {
		case map[string]any:
			for k, w := range x {
				walk(prefix+"."+k, w)
			}
		case Options:
			walk(prefix, map[string]any(x))
		case []any:
			for i, w := range x {
				walk(prefix+"."+strconv.Itoa(i), w)
			}
		default:
			out[prefix[1:]] = normalizeOption(v)
		}
	}
	for k, v := range o {
		walk("."+k, v)
	}
	return out
}

// coveredBy tells whether the (flattened) key k is one of names or a
// member of one.
func coveredBy(k string, names []string) bool {
	for _, n := range names {
		if k == n || strings.HasPrefix(k, n+".") {
			return true
		}
	}
	return false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// normalizeOption makes an option value comparable whatever its origin
// (json.Number and float64 from QMP, int64 from the command line).
func normalizeOption(v any) any {
	switch x := v.(type) {
	case json.Number:
		return x.String()
	case int64:
		return strconv.FormatInt(x, 10)
	case int:
		return strconv.Itoa(x)
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	}
	return v
}

// inheritsFromChain tells whether n is p or was opened inline for p,
// directly or through nodes that were in turn (QEMU's
// bdrv_inherits_from_recursive). When a backing link moves a node that
// inherits this way under p, the node inherits from p directly from then
// on, so that reopening p can still name its options inline.
func (n *Node) inheritsFromChain(p *Node) bool {
	for x := n; x != nil; x = x.inheritsFrom {
		if x == p {
			return true
		}
	}
	return false
}

// keepInheritsFrom returns a function that puts back what n inherits
// from now (nil n: nothing), for a reopen that fails after a link moved.
func keepInheritsFrom(n *Node) func() {
	if n == nil {
		return func() {}
	}
	was := n.inheritsFrom
	return func() { n.inheritsFrom = was }
}

// subtree is n and every node below it.
func (n *Node) subtree() []*Node {
	out := []*Node{n}
	for i := 0; i < len(out); i++ {
		for _, c := range out[i].children {
			if cn := c.node.Load(); !slices.Contains(out, cn) {
				out = append(out, cn)
			}
		}
	}
	return out
}
