package blockdev_test

import (
	"context"
	"errors"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	_ "github.com/qbmond/qbmond/drivers/all"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// testfmt is a format driver for the tests: its file child has the image
// role, so it takes write and resize on it and shares neither, like qcow2.
type testfmt struct{ file *blockdev.Child }

func init() {
	blockdev.RegisterDriver("testfmt", func() blockdev.Driver { return new(testfmt) })
}

func (d *testfmt) Open(ctx context.Context, oc *blockdev.OpenContext) (err error) {
	d.file, err = oc.OpenChild(ctx, "file", blockdev.RoleImage)
	return err
}
func (d *testfmt) Close() error { return nil }
func (d *testfmt) Read(ctx context.Context, off int64, p []byte) error {
	return d.file.Read(ctx, off, p)
}
func (d *testfmt) Write(ctx context.Context, off int64, p []byte, f blockdev.ReqFlags) error {
	return d.file.Write(ctx, off, p, f)
}
func (d *testfmt) WriteZeroes(ctx context.Context, off, n int64, f blockdev.ReqFlags) error {
	return d.file.WriteZeroes(ctx, off, n, f)
}
func (d *testfmt) Discard(ctx context.Context, off, n int64) error { return nil }
func (d *testfmt) Flush(ctx context.Context) error                 { return d.file.Flush(ctx) }
func (d *testfmt) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	return d.file.BlockStatus(ctx, off, n)
}
func (d *testfmt) Length(ctx context.Context) (int64, error) { return d.file.Length(), nil }
func (d *testfmt) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{ClusterSize: 65536}, nil
}

func newGraph(t testing.TB) *blockdev.Graph {
	g := blockdev.NewGraph(zerolog.Nop())
	t.Cleanup(func() { g.Close() })
	return g
}

// add runs blockdev-add under the graph lock.
func add(g *blockdev.Graph, o blockdev.Options) error {
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	_, err := lk.Add(context.Background(), o)
	return err
}

func del(g *blockdev.Graph, name string) error {
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	return lk.Delete(context.Background(), name)
}

func names(g *blockdev.Graph) []string {
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	var out []string
	for _, n := range lk.Nodes() {
		out = append(out, n.Name())
	}
	return out
}

func mustAdd(t *testing.T, g *blockdev.Graph, o blockdev.Options) {
	t.Helper()
	if err := add(g, o); err != nil {
		t.Fatalf("blockdev-add %v: %v", o, err)
	}
}

func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	if err == nil || err.Error() != want {
		t.Fatalf("got error %v, want %q", err, want)
	}
}

func TestNodeNames(t *testing.T) {
	g := newGraph(t)
	// Texts as qemu-storage-daemon 7.2 answers.
	for name, want := range map[string]string{
		"1a":                                "Invalid node-name: '1a'",
		"a b":                               "Invalid node-name: 'a b'",
		"#block1":                           "Invalid node-name: '#block1'",
		"":                                  "Invalid node-name: ''",
		"a2345678901234567890123456789012":  "Node name too long",
		"a2345678901234567890123456789012@": "Invalid node-name: 'a2345678901234567890123456789012@'",
	} {
		err := add(g, blockdev.Options{"driver": "null-co", "node-name": name})
		if err == nil || err.Error() != want {
			t.Errorf("node-name %q: got %v, want %q", name, err, want)
		}
	}
	for _, ok := range []string{"a234567890123456789012345678901", "a", "Z-._9"} {
		mustAdd(t, g, blockdev.Options{"driver": "null-co", "node-name": ok})
	}
	wantErr(t, add(g, blockdev.Options{"driver": "null-co", "node-name": "a"}), "Duplicate nodes with node-name='a'")
	wantErr(t, add(g, blockdev.Options{"driver": "null-co"}), "'node-name' must be specified for the root node")
	// An inline child may not reuse a name either, and nothing stays.
	wantErr(t, add(g, blockdev.Options{"driver": "raw", "node-name": "r11", "file": map[string]any{"driver": "null-co", "node-name": "a"}}),
		"Duplicate nodes with node-name='a'")
	wantErr(t, add(g, blockdev.Options{"driver": "raw", "node-name": "r11", "file": map[string]any{"driver": "null-co", "node-name": "r11"}}),
		"Duplicate nodes with node-name='r11'")
	wantErr(t, add(g, blockdev.Options{"driver": "raw", "node-name": "r11", "file": "nope"}),
		"Cannot find device='nope' nor node-name='nope'")
	wantErr(t, add(g, blockdev.Options{"driver": "raw", "node-name": "r11", "file": "r11"}),
		"Cannot find device='r11' nor node-name='r11'")
	wantErr(t, add(g, blockdev.Options{"driver": "nosuch", "node-name": "x"}), "Unknown driver 'nosuch'")
	if got := len(names(g)); got != 3 {
		t.Fatalf("%d nodes, want 3: %v", got, names(g))
	}
}

func TestAutoNames(t *testing.T) {
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	auto := regexp.MustCompile(`^#block[0-9]{3,}$`)
	seen := map[string]bool{}
	for i := range 150 {
		name := "r" + string(rune('a'+i%26)) + strings.Repeat("x", i/26)
		mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": name, "file": map[string]any{"driver": "file", "filename": img}})
		lk, unlock := drivertest.Lock(g)
		f := lk.Lookup(name).Child("file").Node().Name()
		unlock()
		if !auto.MatchString(f) {
			t.Fatalf("implicit node named %q", f)
		}
		if seen[f] {
			t.Fatalf("auto name %q given twice", f)
		}
		seen[f] = true
	}
}

func TestDeleteRules(t *testing.T) {
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r0", "file": map[string]any{"driver": "file", "filename": img, "node-name": "ff"}})
	// QSD 7.2: an implicit child is not the monitor's, whatever its name.
	wantErr(t, del(g, "ff"), "Node ff is not owned by the monitor")
	wantErr(t, del(g, "zz"), "Failed to find node with node-name='zz'")

	mustAdd(t, g, blockdev.Options{"driver": "file", "node-name": "f", "filename": img})
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r", "file": "f"})
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r2", "file": "r"})
	wantErr(t, del(g, "f"), "Block device f is in use")
	wantErr(t, del(g, "r"), "Block device r is in use")

	// Deleting r0 takes its implicit child with it.
	if err := del(g, "r0"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(g), ","); got != "f,r,r2" {
		t.Fatalf("after deleting r0: %s", got)
	}
	// A node referenced by name stays when its user goes.
	if err := del(g, "r2"); err != nil {
		t.Fatal(err)
	}
	if err := del(g, "r"); err != nil {
		t.Fatal(err)
	}
	if err := del(g, "f"); err != nil {
		t.Fatal(err)
	}
	wantErr(t, del(g, "f"), "Failed to find node with node-name='f'")
	if n := len(names(g)); n != 0 {
		t.Fatalf("%d nodes left", n)
	}
}

func TestImplicitChildSharedByReference(t *testing.T) {
	// An implicit node referenced by another parent outlives its creator.
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "a", "file": map[string]any{"driver": "file", "filename": img}})
	lk, unlock := drivertest.Lock(g)
	auto := lk.Lookup("a").Child("file").Node().Name()
	unlock()
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "b", "file": auto})
	if err := del(g, "a"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(names(g), ","); got != auto+",b" {
		t.Fatalf("after deleting a: %s", got)
	}
	if err := del(g, "b"); err != nil {
		t.Fatal(err)
	}
	if n := len(names(g)); n != 0 {
		t.Fatalf("implicit node survived its last parent: %v", names(g))
	}
}

func TestAtomicTree(t *testing.T) {
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "file", "node-name": "shared", "filename": img})
	// The innermost node fails: the two raw nodes above it and the edge
	// to the existing node must all go.
	err := add(g, blockdev.Options{"driver": "raw", "node-name": "r9", "file": map[string]any{
		"driver": "raw", "node-name": "r8", "file": map[string]any{"driver": "file", "filename": "/nonexist"}}})
	wantErr(t, err, "Could not open '/nonexist': No such file or directory")
	// Failure after a child opened and attached (raw's own check).
	err = add(g, blockdev.Options{"driver": "raw", "node-name": "r9", "size": int64(4 << 20), "file": map[string]any{
		"driver": "raw", "node-name": "r8", "file": "shared"}})
	if err == nil {
		t.Fatal("oversized window accepted")
	}
	if got := strings.Join(names(g), ","); got != "shared" {
		t.Fatalf("left behind: %s", got)
	}
	lk, unlock := drivertest.Lock(g)
	parents := len(lk.Lookup("shared").Parents())
	unlock()
	if parents != 0 {
		t.Fatalf("the failed tree left %d edges on 'shared'", parents)
	}
	// The names are free again.
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r9", "file": map[string]any{"driver": "raw", "node-name": "r8", "file": "shared"}})
}

func TestPermissionConflicts(t *testing.T) {
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "file", "node-name": "f", "filename": img})
	mustAdd(t, g, blockdev.Options{"driver": "testfmt", "node-name": "q1", "file": "f"})
	// Texts from qemu-storage-daemon 7.2 with two qcow2 nodes (and a raw
	// window) on one file node.
	wantErr(t, add(g, blockdev.Options{"driver": "testfmt", "node-name": "q2", "file": "f"}),
		"Permission conflict on node 'f': permissions 'write, resize' are both required by node 'q1' (uses node 'f' as 'file' child) and unshared by node 'q2' (uses node 'f' as 'file' child).")
	wantErr(t, add(g, blockdev.Options{"driver": "raw", "node-name": "r1", "file": "f", "offset": int64(512)}),
		"Permission conflict on node 'f': permissions 'resize' are both required by node 'q1' (uses node 'f' as 'file' child) and unshared by node 'r1' (uses node 'f' as 'file' child).")
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r2", "file": "f", "read-only": true})

	lk, unlock := drivertest.Lock(g)
	defer unlock()
	f := lk.Lookup("f")
	var got []string
	for _, c := range f.Parents() {
		got = append(got, c.Parent().Name()+":"+c.Perm().String()+"/"+c.Shared().String())
	}
	want := []string{
		"r2:/consistent read, write, write unchanged, resize",
		"q1:consistent read, write, resize/consistent read, write unchanged",
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("edges on f:\n got %q\nwant %q", got, want)
	}
	// A root user that wants to resize f conflicts with q1, which does not
	// share resize; the error names both users.
	_, err := lk.AttachRoot(f, "block device 'x'", blockdev.PermResize, blockdev.PermAll)
	wantErr(t, err, "Permission conflict on node 'f': permissions 'resize' are both required by block device 'x' (uses node 'f' as 'root' child) and unshared by node 'q1' (uses node 'f' as 'file' child).")
	if len(f.Parents()) != 2 {
		t.Fatal("the failed attach left an edge")
	}
	// A writer on q1 propagates nothing new (q1 already writes f), but a
	// writer on r2, which is read-only, is refused.
	_, err = lk.AttachRoot(lk.Lookup("r2"), "block device 'y'", blockdev.PermWrite, blockdev.PermAll)
	wantErr(t, err, "Block node is read-only")
}

func TestPermissionPropagationConflict(t *testing.T) {
	// A user of a raw node that unshares write makes raw unshare it on
	// the file node, which then conflicts with a writer of the file node.
	g := newGraph(t)
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "file", "node-name": "f", "filename": img})
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "r", "file": "f"})
	lk, unlock := drivertest.Lock(g)
	defer unlock()
	w, err := lk.AttachRoot(lk.Lookup("f"), "block device 'w'", blockdev.PermWrite, blockdev.PermAll)
	if err != nil {
		t.Fatal(err)
	}
	_, err = lk.AttachRoot(lk.Lookup("r"), "block device 'reader'", blockdev.PermConsistentRead, blockdev.PermConsistentRead)
	wantErr(t, err, "Permission conflict on node 'f': permissions 'write' are both required by block device 'w' (uses node 'f' as 'root' child) and unshared by node 'r' (uses node 'f' as 'file' child).")
	if got := lk.Lookup("r").Child("file").Shared(); got != blockdev.PermAll {
		t.Fatalf("failed attach changed r's shared perms on f: %v", got)
	}
	lk.DetachRoot(w)
	if _, err := lk.AttachRoot(lk.Lookup("r"), "block device 'reader'", blockdev.PermConsistentRead, blockdev.PermConsistentRead); err != nil {
		t.Fatal(err)
	}
}

func TestIOUnderGraphChanges(t *testing.T) {
	// I/O runs without the graph lock while commands change the graph.
	g := newGraph(t)
	img := drivertest.Image(t, 4<<20)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "disk", "file": map[string]any{"driver": "file", "filename": img}})
	lk, unlock := drivertest.Lock(g)
	c, err := lk.AttachRoot(lk.Lookup("disk"), "block device 'io'", blockdev.PermConsistentRead|blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for w := range 4 {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				off := int64((w*64 + i%64) * 4096)
				if err := c.Write(ctx, off, buf, 0); err != nil {
					t.Error(err)
					return
				}
				if err := c.Read(ctx, off, buf); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for i := range 200 {
		name := "n" + strings.Repeat("x", i%20) + string(rune('a'+i%26))
		_ = add(g, blockdev.Options{"driver": "raw", "node-name": name, "file": "disk"})
		lk, unlock := drivertest.Lock(g)
		_, _ = blockqmp.QueryNamedBlockNodes(ctx, lk, false)
		blockqmp.QueryBlockGraph(lk)
		unlock()
		_ = del(g, name)
	}
	close(stop)
	wg.Wait()
}

func TestCloseFlushesAndRefusesIO(t *testing.T) {
	g := blockdev.NewGraph(zerolog.Nop())
	img := drivertest.Image(t, 1<<20)
	mustAdd(t, g, blockdev.Options{"driver": "raw", "node-name": "disk", "file": map[string]any{"driver": "file", "filename": img}})
	lk, unlock := drivertest.Lock(g)
	c, err := lk.AttachRoot(lk.Lookup("disk"), "block device 'io'", blockdev.PermWrite, blockdev.PermAll)
	unlock()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(context.Background(), 0, []byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Read(context.Background(), 0, make([]byte, 4)); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := add(g, blockdev.Options{"driver": "null-co", "node-name": "late"}); err == nil {
		t.Fatal("blockdev-add after Close succeeded")
	}
	b, _ := os.ReadFile(img)
	if string(b[:4]) != "data" {
		t.Fatal("write lost")
	}
}

func TestGenericOptions(t *testing.T) {
	g := newGraph(t)
	wantErr(t, add(g, blockdev.Options{"driver": "null-co", "node-name": "nn", "detect-zeroes": "unmap"}),
		"setting detect-zeroes to unmap is not allowed without setting discard operation to unmap")
	mustAdd(t, g, blockdev.Options{"driver": "null-co", "node-name": "nn", "detect-zeroes": "unmap", "discard": "unmap"})
}
