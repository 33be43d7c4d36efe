package tests

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Image locking is compared with qemu-storage-daemon: the same commands on
// the same kind of image must leave the same lock bytes in the file, and
// qemu-img/qemu-io must react to qbmond as they react to QSD (and the
// other way round, with the same QMP errors).

// lockProbe lists the QEMU lock bytes (100-103: permission held, 200-203:
// permission not shared) some open of path holds, probed with F_OFD_GETLK
// from an open file of the test's own.
func lockProbe(t *testing.T, path string) []int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var held []int
	for _, off := range []int{100, 101, 102, 103, 200, 201, 202, 203} {
		fl := unix.Flock_t{Type: unix.F_WRLCK, Start: int64(off), Len: 1}
		if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &fl); err != nil {
			t.Fatal(err)
		}
		if fl.Type != unix.F_UNLCK {
			held = append(held, off)
		}
	}
	return held
}

// lockHolder keeps img open in qemu-io (as format) until the returned
// function (or the end of the test) stops it. It returns once byte want is
// locked, i.e. once qemu-io has applied its permissions.
func lockHolder(t *testing.T, format, img string, want int) (stop func()) {
	t.Helper()
	cmd := exec.Command(requireTool(t, "qemu-io"), "-f", format, "-c", "sleep 3600000", img)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(30 * time.Second); !slices.Contains(lockProbe(t, img), want); {
		select {
		case <-exited:
			t.Fatalf("qemu-io holding %s exited: %s", img, out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-io did not lock byte %d of %s", want, img)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return stop
}

// lockTool runs a QEMU tool that may fail and returns its output with the
// test directory spelled DIR, and whether it succeeded.
func lockTool(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(requireTool(t, name), args...).CombinedOutput()
	s := strings.ReplaceAll(string(out), dir, "DIR")
	if err != nil {
		return "FAILED: " + s
	}
	// Success output carries timings; only the fact matters.
	return "ok"
}

func lockWaitNoExports(t *testing.T, c *client) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if l, _ := c.ok("query-block-exports", nil).([]any); len(l) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("exports still there after block-export-del")
		}
	}
}

// lockRawScenario runs, on a daemon of kind k, a raw node over an image
// that gains a read-only and a writable NBD export and loses them again,
// recording after each step the lock bytes and what qemu-img and qemu-io
// manage to do with the image.
func lockRawScenario(t *testing.T, k kind) []string {
	dir := shortTempDir(t)
	img := sparseImage(t, dir, 4<<20)
	d := startDaemon(t, k, dir)
	c := d.connect()
	var log []string
	note := func(step string) {
		log = append(log, fmt.Sprintf("%s: locks %v", step, lockProbe(t, img)))
	}
	tools := func(step string) {
		log = append(log,
			step+": qemu-img resize: "+lockTool(t, dir, "qemu-img", "resize", "-f", "raw", img, "8M"),
			step+": qemu-io write: "+lockTool(t, dir, "qemu-io", "-f", "raw", "-c", "write 0 4k", img),
			step+": qemu-io -r read: "+lockTool(t, dir, "qemu-io", "-f", "raw", "-r", "-c", "read 0 4k", img),
			step+": qemu-img info -U: "+lockTool(t, dir, "qemu-img", "info", "-U", img),
		)
	}

	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0",
		"file": map[string]any{"driver": "file", "filename": img}})
	note("blockdev-add")
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix",
		"data": map[string]any{"path": filepath.Join(dir, "nbd.sock")}}})
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "r", "node-name": "d0", "name": "r"})
	note("read-only export")
	tools("read-only export")
	c.ok("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "d0", "name": "w", "writable": true})
	note("writable export")
	tools("writable export")
	c.ok("block-export-del", map[string]any{"id": "w"})
	c.ok("block-export-del", map[string]any{"id": "r"})
	lockWaitNoExports(t, c)
	note("exports deleted")
	c.ok("blockdev-del", map[string]any{"node-name": "d0"})
	note("blockdev-del")
	tools("blockdev-del")
	return log
}

func TestLockingRawLikeQSD(t *testing.T) {
	want := lockRawScenario(t, kindQSD)
	// The scenario means something only if QSD's locks stop somebody.
	const resizeRefused = `writable export: qemu-img resize: FAILED: qemu-img: Could not open 'DIR/disk.img': Failed to get "resize" lock` +
		"\nIs another process using the image [DIR/disk.img]?\n"
	if !slices.Contains(want, resizeRefused) {
		t.Fatalf("QSD no longer refuses qemu-img resize as expected:\n%s", strings.Join(want, "\n"))
	}
	got := lockRawScenario(t, kindQbmond)
	if !slices.Equal(got, want) {
		t.Fatalf("qbmond:\n%s\n\nQSD:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// lockErrors returns the errors a daemon of kind k gives when it tries to
// use img (a qcow2 image another process writes) through a raw node: a
// writable export, a read-only export, and a qcow2 node when the daemon
// has the driver.
func lockErrors(t *testing.T, k kind, img string) []string {
	d := startDaemon(t, k, "")
	c := d.connect()
	var log []string
	fail := func(what, name string, args map[string]any) {
		r := c.cmd(name, args)
		e, ok := r["error"].(map[string]any)
		if !ok {
			log = append(log, fmt.Sprintf("%s: %v", what, r))
			return
		}
		log = append(log, fmt.Sprintf("%s: %s: %s", what, e["class"], e["desc"]))
	}
	c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0",
		"file": map[string]any{"driver": "file", "node-name": "f0", "filename": img}})
	c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix",
		"data": map[string]any{"path": filepath.Join(d.dir, "nbd.sock")}}})
	fail("writable export", "block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "d0", "writable": true})
	fail("read-only export", "block-export-add", map[string]any{"type": "nbd", "id": "r", "node-name": "d0"})
	fail("qcow2 node", "blockdev-add", map[string]any{"driver": "qcow2", "node-name": "q",
		"file": map[string]any{"driver": "file", "filename": img}})
	fail("read-only qcow2 node", "blockdev-add", map[string]any{"driver": "qcow2", "node-name": "q", "read-only": true,
		"file": map[string]any{"driver": "file", "filename": img}})
	return log
}

func TestLockingHeldByQEMU(t *testing.T) {
	dir := shortTempDir(t)
	img := filepath.Join(dir, "q.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", img, "4M")
	stop := lockHolder(t, "qcow2", img, 201) // write held and unshared

	want := lockErrors(t, kindQSD, img)
	verified := []string{
		`writable export: GenericError: Failed to get "write" lock`,
		`read-only export: GenericError: Failed to get shared "resize" lock`,
		`qcow2 node: GenericError: Failed to get "write" lock`,
		`read-only qcow2 node: GenericError: Failed to get shared "write" lock`,
	}
	if !slices.Equal(want, verified) {
		t.Fatalf("QSD's errors changed:\n%s", strings.Join(want, "\n"))
	}
	got := lockErrors(t, kindQbmond, img)
	if !slices.Equal(got, want) {
		t.Fatalf("qbmond:\n%s\n\nQSD:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The refusals left nothing behind: once qemu-io is gone, the image is
	// free, and qbmond can export it writable.
	stop()
	if l := lockProbe(t, img); len(l) != 0 {
		t.Fatalf("locks after qemu-io exited: %v", l)
	}
	// qemu-io, opening the image as qcow2 to write, is now the one
	// refused, as it is by QSD.
	refused := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		d := startDaemon(t, k, "")
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0",
			"file": map[string]any{"driver": "file", "filename": img}})
		c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix",
			"data": map[string]any{"path": filepath.Join(d.dir, "nbd.sock")}}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "d0", "writable": true})
		if l := lockProbe(t, img); !slices.Equal(l, []int{100, 101, 203}) {
			t.Fatalf("%s: locks of a writable export: %v", k, l)
		}
		refused[k] = lockTool(t, dir, "qemu-io", "-f", "qcow2", "-c", "read 0 4k", img)
		d.stop()
	}
	const verifiedRefusal = "FAILED: qemu-io: can't open device DIR/q.qcow2: Failed to get \"resize\" lock\n" +
		"Is another process using the image [DIR/q.qcow2]?\n"
	if refused[kindQSD] != verifiedRefusal {
		t.Fatalf("qemu-io against QSD's writable export: %q", refused[kindQSD])
	}
	if refused[kindQbmond] != refused[kindQSD] {
		t.Fatalf("qemu-io against qbmond's writable export: %q, against QSD's: %q", refused[kindQbmond], refused[kindQSD])
	}
}

// TestLockingOff: a file node with locking=off takes no locks and ignores
// those of others, like QSD's.
func TestLockingOff(t *testing.T) {
	dir := shortTempDir(t)
	img := filepath.Join(dir, "q.qcow2")
	run(t, "qemu-img", "create", "-f", "qcow2", img, "4M")
	lockHolder(t, "qcow2", img, 201)
	before := lockProbe(t, img)
	for _, k := range []kind{kindQSD, kindQbmond} {
		d := startDaemon(t, k, "")
		c := d.connect()
		c.ok("blockdev-add", map[string]any{"driver": "raw", "node-name": "d0",
			"file": map[string]any{"driver": "file", "filename": img, "locking": "off"}})
		c.ok("nbd-server-start", map[string]any{"addr": map[string]any{"type": "unix",
			"data": map[string]any{"path": filepath.Join(d.dir, "nbd.sock")}}})
		c.ok("block-export-add", map[string]any{"type": "nbd", "id": "w", "node-name": "d0", "writable": true})
		if l := lockProbe(t, img); !slices.Equal(l, before) {
			t.Fatalf("%s: locks %v with locking=off, qemu-io alone holds %v", k, l, before)
		}
		d.stop()
	}
}

// A --blockdev refused for a lock another process holds ends the daemon
// with QEMU's two lines: the error and the hint, as QSD prints them.
func TestLockingHintOnCommandLine(t *testing.T) {
	outs := map[kind]string{}
	for _, k := range []kind{kindQSD, kindQbmond} {
		dir := shortTempDir(t)
		img := filepath.Join(dir, "q.qcow2")
		run(t, "qemu-img", "create", "-f", "qcow2", img, "4M")
		stop := lockHolder(t, "qcow2", img, 201)
		bin := qbmondBin
		if k == kindQSD {
			bin = requireTool(t, "qemu-storage-daemon")
		}
		cmd := exec.Command(bin, "--blockdev", "driver=qcow2,node-name=q,file.driver=file,file.filename="+img)
		out, err := cmd.CombinedOutput()
		stop()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("%s: want exit 1, got %v\n%s", k, err, out)
		}
		outs[k] = daemonPrefix.ReplaceAllString(strings.ReplaceAll(string(out), dir, "DIR"), "")
	}
	if outs[kindQSD] != outs[kindQbmond] {
		t.Fatalf("QSD:\n%s\nqbmond:\n%s", outs[kindQSD], outs[kindQbmond])
	}
	if !strings.Contains(outs[kindQbmond], "Is another process using the image [DIR/q.qcow2]?") {
		t.Fatalf("no hint: %s", outs[kindQbmond])
	}
}
