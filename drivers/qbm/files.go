package qbm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
)

// The files a descriptor names, and which of them qbmond will write.
//
// A descriptor is data: it may come with a downloaded image, and its
// bitmap file names decide where qbmond writes bitmap bytes (at offset 0,
// at every clean close). The block layer opens the image and the backing
// file the way QEMU opens a qcow2 image's backing file (relative to the
// descriptor, or absolute), but bitmap files are written with plain file
// I/O beside it, so they follow a stricter rule:
//
//   - a bitmap file must be a regular file inside the descriptor's
//     directory tree (the directory of the descriptor's file name as it
//     was opened, or below it): a name with ".." leading out of it, an
//     absolute name elsewhere, or a symbolic link that leads out of it
//     (or is absolute) is refused. The files qbmond creates always sit
//     beside the descriptor, so only a hand-made or foreign descriptor
//     can break the rule. QEMU refuses to follow what an image names
//     when that is not a plain file name (json:, protocols; qbmond does
//     too, for every name in a descriptor); bitmap files need more,
//     because they are not nodes: no permission or image lock protects
//     what they name, and they are rewritten whole.
//   - a bitmap file may not be the descriptor, a file of the data image,
//     a file of the backing chain (or a bitmap file of a QBM image in it)
//     or another bitmap's file. Files are compared by device and inode,
//     so a hard link or another spelling of the name does not get past.
//
// The descriptor itself is rewritten by rename (see WriteDescriptor); the
// file replaced is the descriptor's real path, resolved once at open, so
// that a descriptor opened through a symbolic link is updated in place of
// the link's target, not by replacing the link.

// fileID identifies a file by device and inode.
type fileID struct{ dev, ino uint64 }

func idOf(fi os.FileInfo) (fileID, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), st.Ino}, true
}

// nodeFileID is the file a protocol node (file, host_device) has open,
// by its descriptor when the driver shows it, else by its file name.
func nodeFileID(n *blockdev.Node) (fileID, bool) {
	if _, ok := n.Driver().(blockdev.ProtocolDriver); !ok {
		return fileID{}, false
	}
	if fm, ok := n.Driver().(blockdev.FileMapper); ok {
		if fd, _, ok := fm.FileRange(0, 0); ok {
			var st unix.Stat_t
			if unix.Fstat(fd, &st) == nil {
				return fileID{st.Dev, st.Ino}, true
			}
		}
	}
	if fn := n.Filename(); fn != "" {
		if fi, err := os.Stat(fn); err == nil {
			return idOf(fi)
		}
	}
	return fileID{}, false
}

// collectFiles adds the files of n's subtree: those its protocol nodes
// have open and the bitmap files of the QBM nodes in it.
func collectFiles(n *blockdev.Node, used map[fileID]bool, seen map[*blockdev.Node]bool) {
	if n == nil || seen[n] {
		return
	}
	seen[n] = true
	if id, ok := nodeFileID(n); ok {
		used[id] = true
	}
	if q, ok := n.Driver().(*Driver); ok {
		for _, bf := range q.allFiles() {
			used[bf.id] = true
		}
	}
	for _, c := range n.Children() {
		collectFiles(c.Node(), used, seen)
	}
}

// localName turns a bitmap file name into a name relative to dir, or
// reports false when it names a place outside dir (lexically; symbolic
// links are left to os.Root).
func localName(dir, name string) (string, bool) {
	if filepath.IsAbs(name) {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return "", false
		}
		if name, err = filepath.Rel(abs, filepath.Clean(name)); err != nil {
			return "", false
		}
	}
	return name, filepath.IsLocal(name)
}

// openBitmapFile opens e's file under the rule above; the returned path
// is the file's name as error messages show it.
func (d *Driver) openBitmapFile(e *BitmapEntry, flag int) (*os.File, fileID, string, error) {
	path, err := d.resolve(e.File)
	if err != nil {
		return nil, fileID{}, "", err
	}
	if d.descPath == "" {
		return nil, fileID{}, path, fmt.Errorf("Cannot use the file of bitmap \"%s\": the QBM descriptor has no plain file name", e.Name)
	}
	dir := filepath.Dir(d.descPath)
	outside := fmt.Errorf("Bitmap \"%s\" file must be a regular file inside the QBM descriptor's directory %s "+
		"(no \"..\", absolute name or symbolic link leading out of it): %s", e.Name, dir, e.File)
	rel, ok := localName(dir, e.File)
	if !ok {
		return nil, fileID{}, path, outside
	}
	openErr := func(err error) error {
		var errno syscall.Errno
		if errors.As(err, &errno) {
			return fmt.Errorf("Could not open '%s': %s", path, blockdev.Strerror(errno))
		}
		// os.Root's refusal of a path that escapes it.
		return outside
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fileID{}, path, openErr(err)
	}
	defer root.Close()
	notRegular := fmt.Errorf("Bitmap \"%s\" file is not a regular file: %s", e.Name, path)
	// Looked at before opening: opening a FIFO would block.
	fi, err := root.Stat(rel)
	if err != nil {
		return nil, fileID{}, path, openErr(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fileID{}, path, notRegular
	}
	f, err := root.OpenFile(rel, flag|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fileID{}, path, openErr(err)
	}
	fi, err = f.Stat()
	if err != nil {
		f.Close()
		return nil, fileID{}, path, fmt.Errorf("Could not open '%s': %s", path, blockdev.Strerror(err))
	}
	id, ok := idOf(fi)
	if !ok || !fi.Mode().IsRegular() {
		f.Close()
		return nil, fileID{}, path, notRegular
	}
	return f, id, path, nil
}

// checkFiles refuses bitmap files that are also another file of the node
// (see above); files are in descriptor order.
func (d *Driver) checkFiles(files []*bmFile) error {
	byID := map[fileID]*bmFile{}
	for _, bf := range files {
		if other := byID[bf.id]; other != nil {
			return fmt.Errorf("Bitmap \"%s\" file is also the file of bitmap \"%s\": %s", bf.entry.Name, other.entry.Name, bf.path)
		}
		byID[bf.id] = bf
	}
	for _, c := range []struct {
		child *blockdev.Child
		what  string
	}{{d.image, "a file of the data image"}, {d.backing, "a file of the backing chain"}} {
		if c.child == nil {
			continue
		}
		used := map[fileID]bool{}
		collectFiles(c.child.Node(), used, map[*blockdev.Node]bool{})
		for _, bf := range files {
			if used[bf.id] {
				return fmt.Errorf("Bitmap \"%s\" file is also %s: %s", bf.entry.Name, c.what, bf.path)
			}
		}
	}
	return nil
}

// tmpSuffix makes the temporary descriptor's name unique.
var tmpSuffix = func() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// WriteDescriptor writes data as the descriptor at path atomically: a new
// file DESC.tmp.RANDOM in the same directory, created exclusively (never
// through an existing name or symbolic link), fsynced, renamed over path,
// and the directory fsynced. A crash leaves either the old or the new
// descriptor (and perhaps the temporary file). path must be the real
// path: a symbolic link there would be replaced, not followed.
func WriteDescriptor(path string, data []byte) error {
	fail := func(err error) error {
		return fmt.Errorf("Failed to save json description to file: %s", blockdev.Strerror(err))
	}
	fi, statErr := os.Stat(path)
	var f *os.File
	var tmp string
	err := os.ErrExist
	for i := 0; i < 100 && errors.Is(err, os.ErrExist); i++ {
		tmp = path + ".tmp." + tmpSuffix()
		f, err = os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	}
	if err != nil {
		return fail(err)
	}
	if statErr == nil {
		// The descriptor keeps its permissions.
		err = f.Chmod(fi.Mode().Perm())
	}
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fail(err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fail(err)
	}
	return nil
}

// realDescPath resolves the descriptor's file name to the file it names
// now (every symbolic link followed), as an absolute path.
func realDescPath(name string) (string, error) {
	abs, err := filepath.Abs(name)
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(abs)
}
