// Package blkdebug implements QEMU's blkdebug filter: it passes I/O through
// to its "image" child and fails requests on demand, for tests.
//
// Rules follow QEMU 7.2. An inject-error rule names a debug event; it does
// nothing until that event fires (in the rule's state, or in any state when
// it names none), and from then on every request of a matching I/O type
// (read, write, write-zeroes, discard and flush unless iotype says
// otherwise) that covers the rule's sector (any request when no sector is
// given) fails with the rule's errno. A "once" rule is removed after it
// fired; the others stay active until another event activates a new set of
// rules. A flush is checked only when the node was written since its last
// flush (QEMU does not reach the driver otherwise). set-state rules move the state machine (which starts in state 1)
// when their event fires.
//
// Events reach a node in two ways, as in QEMU (see blockdev's
// debugevent.go): the node's generic I/O path raises pwritev, pwritev_zero,
// pwritev_done and the pwritev_rmw_* events on the node itself, and the
// node above raises flush_to_os and flush_to_disk on it when it is
// flushed, and a format node its own events (read_aio, l2_load,
// cluster_alloc, ...), all received through DebugEvent.
//
// Rules come from the inject-error and set-state options and from a
// config file (config.go), whose rules come first.
package blkdebug

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/qbmond/qbmond/blockdev"
)

func init() {
	blockdev.RegisterDriver("blkdebug", func() blockdev.Driver { return new(Driver) })
}

// IOType is the kind of request a rule applies to (QAPI's BlkdebugIOType).
type IOType uint8

// The I/O types, in QAPI's order.
const (
	IORead IOType = iota
	IOWrite
	IOWriteZeroes
	IODiscard
	IOFlush
	IOBlockStatus
)

var ioTypeNames = [...]string{"read", "write", "write-zeroes", "discard", "flush", "block-status"}

// String returns the QAPI name.
func (t IOType) String() string {
	if int(t) < len(ioTypeNames) {
		return ioTypeNames[t]
	}
	return "unknown"
}

// defaultIOMask is what a rule without iotype applies to: everything but
// block-status, as in QEMU.
const defaultIOMask = 1<<IORead | 1<<IOWrite | 1<<IOWriteZeroes | 1<<IODiscard | 1<<IOFlush

// injectRule is one inject-error rule.
type injectRule struct {
	event string
	state int64 // 0: any state
	mask  uint64
	errno int64
	// offset is the byte offset a request must cover (sector * 512,
	// wrapping as QEMU's unsigned arithmetic does); any: no sector.
	offset uint64
	any    bool
	once   bool
}

// setSector sets the sector filter; -1 means none, as in QEMU.
func (r *injectRule) setSector(s int64) {
	r.any = s == -1
	r.offset = uint64(s) * 512
}

// stateRule is one set-state rule.
type stateRule struct {
	event    string
	state    int64 // 0: any state
	newState int64
}

// Driver is one blkdebug node.
type Driver struct {
	image *blockdev.Child
	plain bool // no options but the image: the node has a plain file name
	align int64
	// maxTransfer is the max-transfer option (0: none): the node splits
	// larger reads and writes, and its parents inherit the limit.
	maxTransfer int64
	take        blockdev.Perm
	// unshare holds the permissions the node keeps others from holding on
	// the image.
	unshare blockdev.Perm

	config string // the config file, as given

	// gen counts the node's modifying requests and flushedGen is its
	// value at the last flush: a flush of a node not written since does
	// not reach the driver in QEMU, so rules do not fail it.
	gen, flushedGen uint64

	mu     sync.Mutex
	state  int64
	inject []*injectRule // all inject-error rules, in option order
	sets   []stateRule
	active []*injectRule // activated rules; the first that matches fails a request
}

// Open reads the rules and limits and opens the image child.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	d.state = 1
	if cfg, ok, err := o.String("config"); err != nil {
		return err
	} else if ok {
		// The file's rules come before those of the options, as in QEMU.
		if d.inject, d.sets, err = configRules(cfg); err != nil {
			return err
		}
		d.config = cfg
	}
	if err := d.parseRules(o); err != nil {
		return err
	}
	d.plain = true
	for k := range o {
		switch k {
		case "config", "image", "x-image", "driver":
		default:
			d.plain = false
		}
	}
	var err error
	if d.take, err = permList(o, "take-child-perms"); err != nil {
		return err
	}
	if d.unshare, err = permList(o, "unshare-child-perms"); err != nil {
		return err
	}
	d.image, err = oc.OpenChild(ctx, "image", blockdev.RoleFiltered|blockdev.RolePrimary)
	if err != nil {
		return err
	}
	return d.parseLimits(o)
}

// parseLimits checks align, max-transfer and the write-zeroes and discard
// limits as QEMU does; align and max-transfer change how requests arrive.
func (d *Driver) parseLimits(o blockdev.Options) error {
	get := func(key string) (int64, error) {
		v, _, err := o.Int(key)
		if err != nil {
			return 0, err
		}
		if v < 0 {
			return 0, fmt.Errorf("Parameter '%s' expects a non-negative number below 2^64", key)
		}
		return v, nil
	}
	unmet := func(key string, v int64) error {
		return fmt.Errorf("Cannot meet constraints with %s %d", key, v)
	}
	aligned := func(v, a int64) bool { return a <= 1 || v%a == 0 }

	a, err := get("align")
	if err != nil {
		return err
	}
	if a != 0 && (a >= math.MaxInt32 || a&(a-1) != 0) {
		return unmet("align", a)
	}
	d.align = a
	align := max(a, d.image.Node().RequestAlignment())

	check := func(key string, base int64) (int64, error) {
		v, err := get(key)
		if err != nil {
			return 0, err
		}
		if v != 0 && (v >= math.MaxInt32 || !aligned(v, base)) {
			return 0, unmet(key, v)
		}
		return v, nil
	}
	if d.maxTransfer, err = check("max-transfer", align); err != nil {
		return err
	}
	owz, err := check("opt-write-zero", align)
	if err != nil {
		return err
	}
	if _, err := check("max-write-zero", max(owz, align)); err != nil {
		return err
	}
	od, err := check("opt-discard", align)
	if err != nil {
		return err
	}
	_, err = check("max-discard", max(od, align))
	return err
}

// parseRules reads inject-error and set-state.
func (d *Driver) parseRules(o blockdev.Options) error {
	list := func(key string) ([]blockdev.Options, error) {
		v, ok := o[key]
		if !ok {
			return nil, nil
		}
		items, isList := v.([]any)
		if !isList {
			return nil, fmt.Errorf("Invalid parameter type for '%s', expected: array", key)
		}
		out := make([]blockdev.Options, 0, len(items))
		for i, it := range items {
			m, isMap := it.(map[string]any)
			if !isMap {
				return nil, fmt.Errorf("Invalid parameter type for '%s.%d', expected: object", key, i)
			}
			out = append(out, blockdev.Options(m))
		}
		return out, nil
	}
	injects, err := list("inject-error")
	if err != nil {
		return err
	}
	for _, r := range injects {
		ev, _, err := r.String("event")
		if err != nil {
			return err
		}
		rule := &injectRule{event: ev, mask: defaultIOMask, any: true, errno: int64(syscall.EIO)}
		// QEMU keeps state and errno in C ints.
		if rule.state, _, err = r.Int("state"); err != nil {
			return err
		}
		rule.state = int64(int32(rule.state))
		if t, ok, err := r.String("iotype"); err != nil {
			return err
		} else if ok {
			i := slices.Index(ioTypeNames[:], t)
			if i < 0 {
				return fmt.Errorf("Parameter 'iotype' does not accept value '%s'", t)
			}
			rule.mask = 1 << i
		}
		if e, ok, err := r.Int("errno"); err != nil {
			return err
		} else if ok {
			rule.errno = int64(int32(e))
		}
		if s, ok, err := r.Int("sector"); err != nil {
			return err
		} else if ok {
			rule.setSector(s)
		}
		if rule.once, err = r.Bool("once", false); err != nil {
			return err
		}
		// immediately only changes when QEMU completes the failed request
		// (without a detour through the event loop); the outcome is the same.
		if _, err = r.Bool("immediately", false); err != nil {
			return err
		}
		d.inject = append(d.inject, rule)
	}
	sets, err := list("set-state")
	if err != nil {
		return err
	}
	for _, r := range sets {
		ev, _, err := r.String("event")
		if err != nil {
			return err
		}
		s := stateRule{event: ev}
		if s.state, _, err = r.Int("state"); err != nil {
			return err
		}
		s.state = int64(int32(s.state))
		ns, ok, err := r.Int("new_state")
		if err != nil {
			return err
		}
		if !ok {
			return errors.New("Parameter 'new_state' is missing")
		}
		s.newState = int64(int32(ns))
		d.sets = append(d.sets, s)
	}
	return nil
}

func permList(o blockdev.Options, key string) (blockdev.Perm, error) {
	v, ok := o[key]
	if !ok {
		return 0, nil
	}
	items, isList := v.([]any)
	if !isList {
		return 0, fmt.Errorf("Invalid parameter type for '%s', expected: array", key)
	}
	var p blockdev.Perm
	for _, it := range items {
		name, _ := it.(string)
		found := false
		for bit := blockdev.Perm(1); bit&blockdev.PermAll != 0; bit <<= 1 {
			if n := bit.Names(); len(n) == 1 && n[0] == name {
				p |= bit
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("Parameter '%s' does not accept value '%v'", key, it)
		}
	}
	return p, nil
}

// DebugEvent fires a debug event (a BlkdebugEvent name such as "read_aio")
// on the node: the inject-error rules for it that apply in the current
// state become the active rules, and set-state rules move the state. A
// format node calls it on its file child where QEMU's drivers do.
func (d *Driver) DebugEvent(event string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	newState := d.state
	reset := false
	for _, r := range d.inject {
		if r.event != event || (r.state != 0 && r.state != d.state) {
			continue
		}
		if !reset {
			d.active = d.active[:0]
			reset = true
		}
		d.active = append(d.active, r)
	}
	// When several set-state rules apply, the first one given wins, as in
	// QEMU (which walks its rules newest first).
	for _, s := range slices.Backward(d.sets) {
		if s.event == event && (s.state == 0 || s.state == d.state) {
			newState = s.newState
		}
	}
	d.state = newState
}

// State returns the state machine's current state.
func (d *Driver) State() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state
}

// check fails a request of type t over [off, off+n) when an active rule
// says so.
func (d *Driver) check(t IOType, off, n int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i, r := range d.active {
		if r.mask&(1<<t) == 0 {
			continue
		}
		if !r.any && (n == 0 || r.offset < uint64(off) || r.offset >= uint64(off+n)) {
			continue
		}
		if r.errno == 0 {
			return nil
		}
		if r.once {
			d.active = slices.Delete(d.active, i, i+1)
			d.inject = slices.DeleteFunc(d.inject, func(x *injectRule) bool { return x == r })
		}
		return fmt.Errorf("blkdebug: injected error: %w", syscall.Errno(r.errno))
	}
	return nil
}

// Close does nothing: the graph detaches the child.
func (d *Driver) Close() error { return nil }

// IsFilter: blkdebug is a filter of its image, as in QEMU (chains are
// walked through it).
func (d *Driver) IsFilter() {}

// Read reads from the image unless a rule fails it.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	if err := d.check(IORead, off, int64(len(p))); err != nil {
		return err
	}
	return d.image.Read(ctx, off, p)
}

// Write writes to the image unless a rule fails it (the node's I/O path
// raises pwritev and pwritev_done around it).
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	d.written()
	if err := d.check(IOWrite, off, int64(len(p))); err != nil {
		return err
	}
	return d.image.Write(ctx, off, p, flags)
}

// WriteZeroes zeroes on the image unless a rule fails it (the node's I/O
// path raises pwritev_zero and pwritev_done around it).
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	d.written()
	if err := d.check(IOWriteZeroes, off, n); err != nil {
		return err
	}
	return d.image.WriteZeroes(ctx, off, n, flags)
}

// Discard discards on the image unless a rule fails it.
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	d.written()
	if err := d.check(IODiscard, off, n); err != nil {
		return err
	}
	return d.image.Discard(ctx, off, n)
}

// Flush flushes the image unless a rule fails it. A flush covers no
// sector, so rules with a sector never fail it; and as in QEMU, where the
// flush of a node not written since its last flush does not reach the
// driver, rules do not see such a flush (the image is flushed all the
// same).
func (d *Driver) Flush(ctx context.Context) error {
	d.mu.Lock()
	gen, dirty := d.gen, d.gen != d.flushedGen
	d.mu.Unlock()
	if dirty {
		if err := d.check(IOFlush, 0, 0); err != nil {
			return err
		}
	}
	if err := d.image.Flush(ctx); err != nil {
		return err
	}
	d.mu.Lock()
	d.flushedGen = max(d.flushedGen, gen)
	d.mu.Unlock()
	return nil
}

// written counts a modifying request.
func (d *Driver) written() {
	d.mu.Lock()
	d.gen++
	d.mu.Unlock()
}

// BlockStatus is the image's, unless a rule fails it.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	if err := d.check(IOBlockStatus, off, n); err != nil {
		return blockdev.BlockStatus{}, err
	}
	return d.image.BlockStatus(ctx, off, n)
}

// Length is the image's.
func (d *Driver) Length(ctx context.Context) (int64, error) { return d.image.Length(), nil }

// Info: blkdebug has no cluster size and is never dirty (QSD reports
// dirty-flag false for it).
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, nil
}

// SupportedWriteFlags: the flags pass through to the image.
func (d *Driver) SupportedWriteFlags() blockdev.ReqFlags {
	return blockdev.ReqFUA | blockdev.ReqMayUnmap | blockdev.ReqNoFallback | blockdev.ReqWriteUnchanged
}

// RequestAlignment is the align option (1 without it).
func (d *Driver) RequestAlignment() int64 { return max(d.align, 1) }

// MaxTransfer is the max-transfer option (0 without it).
func (d *Driver) MaxTransfer() int64 { return d.maxTransfer }

// Truncate resizes the image.
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	d.written()
	return d.image.Truncate(ctx, size, exact)
}

// ChildPerm passes permissions through, plus take-child-perms, minus
// unshare-child-perms.
func (d *Driver) ChildPerm(c *blockdev.Child, role blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	p, s := blockdev.DefaultChildPerm(role, true, perm, shared)
	return p | d.take, s &^ d.unshare
}

// StrongOptions: the rules and limits change what the node does.
func (d *Driver) StrongOptions() []string {
	return []string{"config", "align", "max-transfer", "opt-write-zero", "max-write-zero",
		"opt-discard", "max-discard", "inject-error", "set-state"}
}

// A blkdebug node reopens (to change its generic options); its rules and
// other options stay as they are.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error { return nil }

// ReopenCommit has nothing to do.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {}

// ReopenAbort has nothing to undo.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}

// FileOpen: QEMU opens blkdebug as a protocol (its filename prefix), so a
// format node above takes its file name.
func (d *Driver) FileOpen() {}

// ExactFilename is QEMU's "blkdebug:CONFIG:FILE" for a node with no
// options but its image and config file, when the image has a plain file
// name.
func (d *Driver) ExactFilename() string {
	if fn := d.image.Node().Filename(); d.plain && fn != "" && !strings.HasPrefix(fn, "json:") {
		return "blkdebug:" + d.config + ":" + fn
	}
	return ""
}

// AllocatedSize: QEMU does not know the size a blkdebug node's storage
// takes (nor, then, that of the nodes above it).
func (d *Driver) AllocatedSize(ctx context.Context) (int64, error) {
	return 0, blockdev.ErrNotSupported
}
