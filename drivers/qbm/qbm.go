package qbm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/qbmond/qbmond/bitmap"
	"github.com/qbmond/qbmond/blockdev"
)

func init() { blockdev.Register("qbm", format{}) }

// format is what the package registers: it opens qbm nodes, recognises
// qbm descriptors by content and creates them.
type format struct{}

func (format) New() blockdev.Driver  { return new(Driver) }
func (format) Probe(head []byte) int { return Probe(head) }
func (format) Create(ctx context.Context, cc *blockdev.CreateContext) error {
	return create(ctx, cc)
}

// Creator is what qbmond writes as a new descriptor's "creator".
const Creator = "qbmond 0.1.0"

// Bitmap-sync policies (the qbm option "bitmap-sync").
const (
	SyncClose = "close"
	SyncWrite = "write"
)

// Driver is one qbm node. Its children are "file" (the descriptor),
// "image" (the data image) and, with an allocation bitmap, "backing".
//
// Bitmap files are not child nodes: they are the driver's own metadata,
// read and written with plain file I/O in the descriptor's directory. That
// lets block-dirty-bitmap-add and -remove create and delete them while the
// node is open (the graph attaches children only while a node opens), and
// gives the driver the fsync ordering QBM.md's crash safety needs.
type Driver struct {
	node     *blockdev.Node
	file     *blockdev.Child // the descriptor
	image    *blockdev.Child
	backing  *blockdev.Child
	ro       bool
	syncMode string
	descPath string // "" when the descriptor has no plain file name
	// realPath is the descriptor's file with every symbolic link resolved
	// at open: the file rewrites replace ("" when that failed: realErr).
	realPath string
	realErr  error
	override bool // image or backing given as options: no plain file name

	mu    sync.Mutex // desc, bitmap files list changes, descriptor writes
	desc  *Descriptor
	alloc *bmFile // nil without an allocation bitmap
	dirty atomic.Pointer[[]*bmFile]
	// retired are files of removed bitmaps, closed with the node.
	retired []*bmFile
	closed  bool
}

// bmFile is one bitmap file of the descriptor.
type bmFile struct {
	entry *BitmapEntry
	path  string
	f     *os.File
	id    fileID // the file's device and inode

	mu sync.Mutex // serialises writes to f and changes of disk
	// bits: the allocation bitmap itself, or the dirty bitmap's bits.
	bits *bitmap.Bitmap
	db   *blockdev.DirtyBitmap // dirty bitmaps only
	// disk, in bitmap-sync=write mode, is a superset of what the file
	// holds since the last full save: it only grows between saves, so
	// concurrent writers never drop each other's bits from the file.
	disk      *bitmap.Bitmap
	lastCount int64
	needSync  atomic.Bool // written since the last fsync
	// incons: loaded in use or not matching its "sha256"; such a bitmap
	// is never saved, only removed.
	incons bool
}

// syncModeOption reads bitmap-sync (close when absent).
func syncModeOption(o blockdev.Options) (string, error) {
	mode, _, err := o.String("bitmap-sync")
	if err != nil {
		return "", err
	}
	switch mode {
	case "":
		return SyncClose, nil
	case SyncClose, SyncWrite:
		return mode, nil
	}
	return "", fmt.Errorf("Parameter 'bitmap-sync' does not accept value '%s'", mode)
}

type openingKey struct{}

// opening returns the descriptors being opened further up the current
// blockdev-add (an image or backing chain that leads back to one of them
// is a loop).
func opening(ctx context.Context) []os.FileInfo {
	v, _ := ctx.Value(openingKey{}).([]os.FileInfo)
	return v
}

// Open reads the descriptor from the "file" child, opens the image and
// the backing node and loads the bitmaps.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	d.node, d.ro = oc.Node(), oc.ReadOnly()
	mode, err := syncModeOption(o)
	if err != nil {
		return err
	}
	d.syncMode = mode
	d.override = o.Has("image") || o.Has("backing")

	if d.file, err = oc.OpenChild(ctx, "file", blockdev.RolePrimary|blockdev.RoleMetadata); err != nil {
		return err
	}
	if fn := d.file.Node().Filename(); !strings.HasPrefix(fn, "json:") {
		d.descPath = fn
		d.realPath, d.realErr = realDescPath(fn)
		if d.realErr == nil {
			// The file the node has open is the one rewrites replace.
			fi, err := os.Stat(d.realPath)
			if id, ok := nodeFileID(d.file.Node()); ok && (err != nil || !sameID(fi, id)) {
				d.realPath, d.realErr = "", fmt.Errorf("%s no longer names the file that was opened", fn)
			}
		}
	}
	if d.file.Length() > MaxDescriptorSize {
		return errors.New("QBM description file too big.")
	}
	buf := make([]byte, d.file.Length())
	if err := d.file.Read(ctx, 0, buf); err != nil {
		return fmt.Errorf("Failed to read QBM descriptor: %w", err)
	}
	// The file node's length is rounded up to 512 bytes; the padding reads
	// as NUL bytes, which no JSON text ends with.
	if d.desc, err = Parse(bytes.TrimRight(buf, "\x00")); err != nil {
		return err
	}

	var self os.FileInfo
	if d.descPath != "" {
		self, _ = os.Stat(d.descPath)
	}
	if self != nil {
		for _, fi := range opening(ctx) {
			if os.SameFile(fi, self) {
				return fmt.Errorf("QBM descriptor loop: %s is part of its own image or backing chain", d.descPath)
			}
		}
		chain := append(append([]os.FileInfo(nil), opening(ctx)...), self)
		ctx = context.WithValue(ctx, openingKey{}, chain)
	}

	if err := d.openImage(ctx, oc, self); err != nil {
		return err
	}
	size := d.image.Length()
	var dirty []*bmFile
	for _, e := range d.desc.Bitmaps {
		bf, err := d.loadBitmap(e, size, self)
		if err != nil {
			d.closeFiles(dirty)
			return err
		}
		if e.Type == TypeAllocation {
			d.alloc = bf
			continue
		}
		dirty = append(dirty, bf)
	}
	all := append(append([]*bmFile(nil), dirty...), d.alloc)
	if d.alloc == nil {
		all = dirty
	}
	inOrder := func() []*bmFile {
		var out []*bmFile
		for _, e := range d.desc.Bitmaps {
			for _, bf := range all {
				if bf.entry == e {
					out = append(out, bf)
				}
			}
		}
		return out
	}
	if d.alloc != nil {
		name, format := "", ""
		if b := d.alloc.entry.Backing; b != nil {
			name, format = b.File, b.Format
		}
		if d.backing, err = oc.OpenBacking(ctx, name, format); err != nil {
			d.closeFiles(all)
			return err
		}
	} else if v, ok := o["backing"]; ok && v != nil {
		d.closeFiles(all)
		return errors.New("A QBM image needs an allocation bitmap to have a backing file")
	}
	if err := d.checkFiles(inOrder()); err != nil {
		d.closeFiles(all)
		return err
	}

	for _, bf := range dirty {
		e := bf.entry
		bf.db = oc.LoadDirtyBitmap(e.Name, bf.bits, e.Enabled, bf.inconsistent())
		bf.lastCount = bf.bits.Count()
		if d.syncMode == SyncWrite {
			bf.disk = bf.bits.Copy()
		}
	}
	d.dirty.Store(&dirty)
	if d.ro {
		return nil
	}
	// Open read-write: the stored checksums no longer hold, and in close
	// mode every dirty bitmap is in use until it is saved.
	changed := false
	for _, bf := range all {
		if bf.entry.SHA256 != "" {
			bf.entry.SHA256, changed = "", true
		}
		if bf.entry.Type == TypeDirty && d.syncMode == SyncClose && !bf.entry.InUse {
			bf.entry.InUse, changed = true, true
		}
	}
	if changed {
		if err := d.saveDescriptor(); err != nil {
			d.closeFiles(all)
			return err
		}
	}
	return nil
}

// inconsistent tells whether a dirty bitmap was not saved cleanly (its
// file then says nothing reliable).
func (bf *bmFile) inconsistent() bool { return bf.incons }

// openImage opens the data image: the "image" option, or the descriptor's
// image as an implicit node.
func (d *Driver) openImage(ctx context.Context, oc *blockdev.OpenContext, self os.FileInfo) error {
	o := oc.Options()
	var err error
	if o.Has("image") {
		d.image, err = oc.OpenChild(ctx, "image", blockdev.RoleData)
		return err
	}
	path, err := d.resolve(d.desc.Image.File)
	if err != nil {
		return err
	}
	if sameFile(self, path) {
		return fmt.Errorf("QBM descriptor names itself as its image: %s", path)
	}
	o["image"] = map[string]any{
		"driver": d.desc.Image.Format,
		"file":   map[string]any{"driver": "file", "filename": path},
	}
	d.image, err = oc.OpenChild(ctx, "image", blockdev.RoleData)
	delete(o, "image")
	if err != nil {
		return fmt.Errorf("Could not open QBM image: %w", err)
	}
	return nil
}

// resolve turns a file name of the descriptor into a path: relative names
// are relative to the descriptor's directory.
func (d *Driver) resolve(name string) (string, error) {
	if strings.HasPrefix(name, "/") {
		return name, nil
	}
	if d.descPath == "" {
		return "", fmt.Errorf("Cannot use relative file name \"%s\": the QBM descriptor has no plain file name", name)
	}
	if i := strings.LastIndexByte(d.descPath, '/'); i >= 0 {
		return d.descPath[:i+1] + name, nil
	}
	return name, nil
}

func sameID(fi os.FileInfo, id fileID) bool {
	other, ok := idOf(fi)
	return ok && other == id
}

func sameFile(fi os.FileInfo, path string) bool {
	if fi == nil {
		return false
	}
	other, err := os.Stat(path)
	return err == nil && os.SameFile(fi, other)
}

// loadBitmap opens and reads one bitmap file.
func (d *Driver) loadBitmap(e *BitmapEntry, size int64, self os.FileInfo) (*bmFile, error) {
	flag := os.O_RDWR
	if d.ro {
		flag = os.O_RDONLY
	}
	f, id, path, err := d.openBitmapFile(e, flag)
	if err != nil {
		return nil, err
	}
	bf := &bmFile{entry: e, path: path, f: f, id: id}
	fail := func(err error) (*bmFile, error) {
		f.Close()
		return nil, err
	}
	if self != nil && sameID(self, id) {
		return fail(fmt.Errorf("QBM descriptor names itself as the file of bitmap \"%s\": %s", e.Name, path))
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(fmt.Errorf("Failed to read bitmap file \"%s\": %s", path, blockdev.Strerror(err)))
	}
	need := BitmapFileSize(size, e.Granularity)
	if fi.Size() < need {
		return fail(fmt.Errorf("Bitmap \"%s\" file too small (expecting at least %d bytes but got %d bytes): %s",
			e.Name, need, fi.Size(), path))
	}
	if need > 1<<34 {
		return fail(fmt.Errorf("Bitmap \"%s\" too big", e.Name))
	}
	data := make([]byte, need)
	if _, err := f.ReadAt(data, 0); err != nil {
		return fail(fmt.Errorf("Failed to read bitmap file \"%s\": %s", path, blockdev.Strerror(err)))
	}
	if e.SHA256 != "" && !e.InUse && !strings.EqualFold(e.SHA256, fileSum(data)) {
		if e.Type == TypeAllocation {
			return fail(fmt.Errorf("Bitmap \"%s\" does not match its \"sha256\": %s", e.Name, path))
		}
		// A dirty bitmap whose file changed behind our back is not
		// trusted: it loads inconsistent.
		bf.incons = true
	}
	if e.Type == TypeDirty && e.InUse {
		bf.incons = true
	}
	var short *bitmap.ShortDataError
	if bf.bits, err = bitmap.UnmarshalBits(size, e.Granularity, data); errors.As(err, &short) {
		return fail(fmt.Errorf("Bitmap \"%s\" file too small (expecting at least %d bytes but got %d bytes): %s",
			e.Name, short.Want, short.Got, path))
	} else if err != nil {
		return fail(fmt.Errorf("Bitmap \"%s\": %w", e.Name, err))
	}
	return bf, nil
}

// fileSum is the "sha256" of a bitmap file's significant bytes.
func fileSum(data []byte) string {
	s := sha256.Sum256(data)
	return hex.EncodeToString(s[:])
}

func (d *Driver) closeFiles(files []*bmFile) {
	for _, bf := range files {
		if bf != nil && bf.f != nil {
			bf.f.Close()
		}
	}
}

func (d *Driver) dirtyFiles() []*bmFile {
	if p := d.dirty.Load(); p != nil {
		return *p
	}
	return nil
}

// Close saves every bitmap (contents, "sha256", in-use cleared) and
// releases the bitmap files. The node was flushed first.
func (d *Driver) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	files := d.dirtyFiles()
	if d.alloc != nil {
		files = append(append([]*bmFile(nil), files...), d.alloc)
	}
	var err error
	if !d.ro {
		err = d.saveAll()
	}
	d.closeFiles(files)
	d.closeFiles(d.retired)
	return err
}

// Read reads through the allocation bitmap: allocated granules from the
// image, the others from the backing node (zeroes without one).
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	a := d.alloc
	if a == nil {
		return d.image.Read(ctx, off, p)
	}
	for len(p) > 0 {
		n := int64(len(p))
		run, allocated := a.run(off, n)
		var err error
		if allocated {
			err = d.image.Read(ctx, off, p[:run])
		} else {
			err = d.readBacking(ctx, off, p[:run])
		}
		if err != nil {
			return err
		}
		p, off = p[run:], off+run
	}
	return nil
}

// run returns the length of the longest prefix of [off, off+n) whose
// granules share one allocation state, and that state.
func (bf *bmFile) run(off, n int64) (int64, bool) {
	if bf.bits.Get(off) {
		if end := bf.bits.NextClean(off, n); end >= 0 {
			return end - off, true
		}
		return n, true
	}
	if end := bf.bits.NextDirty(off, n); end >= 0 {
		return end - off, false
	}
	return n, false
}

// readBacking reads unallocated data: from the backing node where it has
// data, zeroes past its end or without one.
func (d *Driver) readBacking(ctx context.Context, off int64, p []byte) error {
	if d.backing == nil {
		clear(p)
		return nil
	}
	n := max(0, min(int64(len(p)), d.backing.Length()-off))
	if n > 0 {
		if err := d.backing.Read(ctx, off, p[:n]); err != nil {
			return err
		}
	}
	clear(p[n:])
	return nil
}

// Write writes to the image and, with an allocation bitmap, allocates the
// granules written (the block layer aligned the request to them).
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	n := int64(len(p))
	if err := d.persistDirty(off, n, flags); err != nil {
		return err
	}
	if err := d.image.Write(ctx, off, p, flags); err != nil {
		return err
	}
	return d.allocate(off, n, flags)
}

// WriteZeroes zeroes the range in the image and allocates it.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	if err := d.persistDirty(off, n, flags); err != nil {
		return err
	}
	if err := d.image.WriteZeroes(ctx, off, n, flags); err != nil {
		return err
	}
	return d.allocate(off, n, flags)
}

// Discard is passed to the image when there is no allocation bitmap; with
// one it is ignored (it is advisory, and the granules stay allocated).
func (d *Driver) Discard(ctx context.Context, off, n int64) error {
	if err := d.persistDirty(off, n, 0); err != nil {
		return err
	}
	if d.alloc != nil {
		return nil
	}
	return d.image.Discard(ctx, off, n)
}

// allocate sets the allocation bits of [off, off+n) and writes them to the
// bitmap file; they are made durable before a FUA write completes and by
// the next flush otherwise.
func (d *Driver) allocate(off, n int64, flags blockdev.ReqFlags) error {
	a := d.alloc
	if a == nil || n == 0 {
		return nil
	}
	if a.bits.NextClean(off, n) >= 0 {
		a.mu.Lock()
		a.bits.Set(off, n)
		err := a.writeRange(a.bits, off, n)
		a.mu.Unlock()
		if err != nil {
			return err
		}
	}
	if flags&blockdev.ReqFUA != 0 {
		return a.sync()
	}
	return nil
}

// persistDirty, in bitmap-sync=write mode, writes the bits of [off,
// off+n) of every recording dirty bitmap to its file before the data
// write goes on (fsynced first for FUA writes).
func (d *Driver) persistDirty(off, n int64, flags blockdev.ReqFlags) error {
	if d.syncMode != SyncWrite || d.ro || n == 0 {
		return nil
	}
	for _, bf := range d.dirtyFiles() {
		if bf.db == nil || !bf.db.Recording() {
			continue
		}
		bf.mu.Lock()
		bf.disk.Set(off, n)
		err := bf.writeRange(bf.disk, off, n)
		bf.mu.Unlock()
		if err == nil && flags&blockdev.ReqFUA != 0 {
			err = bf.sync()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// writeRange writes the bytes of bits' file layout that hold the granules
// of [off, off+n). The caller holds bf.mu.
func (bf *bmFile) writeRange(bits *bitmap.Bitmap, off, n int64) error {
	size := bits.Size()
	if off >= size || n <= 0 {
		return nil
	}
	g := int64(bits.Granularity())
	first := off / g / 8
	last := (min(off+n, size) - 1) / g / 8
	buf := make([]byte, last-first+1)
	for j := range buf {
		var v byte
		for k := range int64(8) {
			at := ((first+int64(j))*8 + k) * g
			if at < size && bits.Get(at) {
				v |= 1 << k
			}
		}
		buf[j] = v
	}
	if _, err := bf.f.WriteAt(buf, first); err != nil {
		return fmt.Errorf("Failed to write bitmap file \"%s\": %s", bf.path, blockdev.Strerror(err))
	}
	bf.needSync.Store(true)
	return nil
}

// sync fsyncs the bitmap file if it was written since the last sync.
func (bf *bmFile) sync() error {
	if !bf.needSync.Swap(false) {
		return nil
	}
	if err := bf.f.Sync(); err != nil {
		bf.needSync.Store(true)
		return fmt.Errorf("Failed to flush bitmap file \"%s\": %s", bf.path, blockdev.Strerror(err))
	}
	return nil
}

// Flush makes everything durable in the order that keeps a crash safe:
// in bitmap-sync=write mode the dirty bitmaps' files first (a bit on disk
// for data that is not is harmless; the reverse would lose a change),
// then the image, then the allocation bits (which must never claim data
// the image does not have on disk).
func (d *Driver) Flush(ctx context.Context) error {
	if !d.ro && d.syncMode == SyncWrite {
		for _, bf := range d.dirtyFiles() {
			if bf.db == nil || bf.inconsistent() {
				continue
			}
			if c := bf.bits.Count(); c != bf.lastCount {
				// Bits that changed without a write reach the file.
				bf.mu.Lock()
				err := bf.disk.Merge(bf.bits)
				if err == nil {
					err = bf.writeAll(bf.disk)
				}
				bf.lastCount = c
				bf.mu.Unlock()
				if err != nil {
					return err
				}
			}
			if err := bf.sync(); err != nil {
				return err
			}
		}
	}
	if err := d.image.Flush(ctx); err != nil {
		return err
	}
	if d.ro {
		return nil
	}
	if d.alloc != nil {
		if err := d.alloc.sync(); err != nil {
			return err
		}
	}
	return nil
}

// writeAll writes the whole bitmap to the file and returns its bytes.
// The caller holds bf.mu.
func (bf *bmFile) writeAll(bits *bitmap.Bitmap) error {
	data := bits.MarshalBits()
	if _, err := bf.f.WriteAt(data, 0); err != nil {
		return fmt.Errorf("Failed to write bitmap file \"%s\": %s", bf.path, blockdev.Strerror(err))
	}
	bf.needSync.Store(true)
	return nil
}

// BlockStatus: with an allocation bitmap, allocated granules have the
// image's data/zero status, unallocated ones are not allocated here (and
// read as zeroes without a backing node); without one the image's status.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	a := d.alloc
	if a == nil {
		st, err := d.image.BlockStatus(ctx, off, n)
		st.Flags |= blockdev.StatusAllocated
		return st, err
	}
	run, allocated := a.run(off, n)
	if !allocated {
		var f blockdev.StatusFlags
		if d.backing == nil {
			f = blockdev.StatusZero
		}
		return blockdev.BlockStatus{Flags: f, Length: run}, nil
	}
	st, err := d.image.BlockStatus(ctx, off, run)
	if err != nil {
		return st, err
	}
	st.Flags = st.Flags&(blockdev.StatusData|blockdev.StatusZero) | blockdev.StatusAllocated
	return st, nil
}

// Length is the image's length.
func (d *Driver) Length(ctx context.Context) (int64, error) { return d.image.Length(), nil }

// Info: the cluster size is the allocation granularity; without an
// allocation bitmap the image's information.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	if d.alloc != nil {
		return blockdev.DriverInfo{ClusterSize: int64(d.alloc.entry.Granularity)}, nil
	}
	return d.image.Node().Driver().Info(ctx)
}

// RequestAlignment is the allocation granularity: the block layer then
// read-modify-writes partial granules, through the backing node.
func (d *Driver) RequestAlignment() int64 {
	if d.alloc != nil {
		return int64(d.alloc.entry.Granularity)
	}
	return 1
}

// SupportedWriteFlags: FUA is honoured (image and bitmaps); the others
// are passed on to the image.
func (d *Driver) SupportedWriteFlags() blockdev.ReqFlags {
	return blockdev.ReqFUA | blockdev.ReqMayUnmap | blockdev.ReqNoFallback
}

// ChildPerm: the descriptor is only read through its node (it is
// replaced by rename); the image is a data child that asks for write and
// resize only when the node's users need them; the backing node is read.
func (d *Driver) ChildPerm(c *blockdev.Child, role blockdev.Role, perm, shared blockdev.Perm) (blockdev.Perm, blockdev.Perm) {
	switch c.Name() {
	case "file":
		return blockdev.PermConsistentRead, blockdev.PermConsistentRead | blockdev.PermWriteUnchanged
	case "image":
		p, s := blockdev.DefaultChildPerm(blockdev.RoleData, true, perm, shared)
		const wr = blockdev.PermWrite | blockdev.PermResize
		return p&^wr | perm&wr | blockdev.PermConsistentRead, s
	}
	return blockdev.DefaultChildPerm(role, !d.ro, perm, shared)
}

// ExactFilename is the descriptor's file name, unless the image or the
// backing node were given as options.
func (d *Driver) ExactFilename() string {
	if d.override {
		return ""
	}
	return d.descPath
}

// BackingFile reports the allocation bitmap's backing entry.
func (d *Driver) BackingFile() (filename, format string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.alloc == nil || d.alloc.entry.Backing == nil {
		return "", ""
	}
	return d.alloc.entry.Backing.File, d.alloc.entry.Backing.Format
}

// SetBackingChild follows the graph's changes of the backing link
// (commit, stream, drop-intermediate); the graph drains the node around
// it, so no request reads the field meanwhile.
func (d *Driver) SetBackingChild(c *blockdev.Child) { d.backing = c }

// ChangeBackingFile rewrites the allocation bitmap's backing entry (""
// removes it).
func (d *Driver) ChangeBackingFile(ctx context.Context, filename, format string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.alloc == nil {
		if filename == "" {
			return nil
		}
		return fmt.Errorf("QBM image without an allocation bitmap cannot have a backing file: %w", blockdev.ErrNotSupported)
	}
	if err := checkPath(filename); err != nil {
		return err
	}
	e := d.alloc.entry
	old := e.Backing
	if filename == "" {
		e.Backing = nil
	} else {
		nb := &FileRef{File: filename, Format: format}
		e.Backing = nb
	}
	if err := d.saveDescriptor(); err != nil {
		e.Backing = old
		return err
	}
	return nil
}

// MakeEmpty clears the allocation bitmap (everything then reads from the
// backing node) and discards the image's data.
func (d *Driver) MakeEmpty(ctx context.Context) error {
	a := d.alloc
	if a == nil {
		return fmt.Errorf("QBM image without an allocation bitmap cannot be emptied: %w", blockdev.ErrNotSupported)
	}
	if d.ro {
		return blockdev.ErrReadOnly
	}
	a.mu.Lock()
	a.bits.Clear()
	err := a.writeAll(a.bits)
	a.mu.Unlock()
	if err == nil {
		err = a.sync()
	}
	if err != nil {
		return err
	}
	return d.image.Discard(ctx, 0, d.image.Length())
}

// Truncate grows the image and the bitmap files. With a backing node the
// new area is allocated (it must read as zeroes, not as the backing
// node's data); a partial last granule is copied up first.
func (d *Driver) Truncate(ctx context.Context, size int64, exact bool) error {
	old := d.image.Length()
	if size < old {
		return fmt.Errorf("QBM images cannot be shrunk: %w", blockdev.ErrNotSupported)
	}
	if size == old {
		return nil
	}
	a := d.alloc
	var head []byte
	var headAt int64
	if a != nil && d.backing != nil {
		g := int64(a.entry.Granularity)
		if headAt = old / g * g; headAt < old && !a.bits.Get(headAt) {
			head = make([]byte, old-headAt)
			if err := d.readBacking(ctx, headAt, head); err != nil {
				return err
			}
		}
	}
	if err := d.image.Truncate(ctx, size, exact); err != nil {
		return err
	}
	newLen := d.image.Length()
	files := d.dirtyFiles()
	if a != nil {
		files = append(append([]*bmFile(nil), files...), a)
	}
	for _, bf := range files {
		need := BitmapFileSize(newLen, bf.entry.Granularity)
		fi, err := bf.f.Stat()
		if err == nil && fi.Size() < need {
			err = bf.f.Truncate(need)
		}
		if err != nil {
			return fmt.Errorf("Failed to resize bitmap file \"%s\": %s", bf.path, blockdev.Strerror(err))
		}
		bf.mu.Lock()
		if bf.disk != nil {
			bf.disk.Resize(newLen)
		}
		if bf == a {
			a.bits.Resize(newLen)
		}
		bf.mu.Unlock()
	}
	if a != nil && d.backing != nil {
		if head != nil {
			if err := d.image.Write(ctx, headAt, head, 0); err != nil {
				return err
			}
			old = headAt
		}
		return d.allocate(old, newLen-old, 0)
	}
	return nil
}
