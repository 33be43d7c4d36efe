package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TestSocketModeQSD: QSD's monitor socket follows the umask (0777 &^
// umask, so 0777 under umask 000): bind creates it at its path with that
// mode. qbmond deliberately creates its unix sockets 0600 whatever the
// umask, and atomically: bound in a private directory and renamed into
// place (inotify sees IN_MOVED_TO, never IN_CREATE, at the socket's path),
// so it never exists there with another mode; no temporary entry is left.
func TestSocketModeQSD(t *testing.T) {
	for _, umask := range []int{0o000, 0o022} {
		qsdMode, qsdHow := socketModeUnder(t, kindQSD, umask)
		if want := os.FileMode(0o777 &^ umask); qsdMode != want || qsdHow != "created" {
			t.Errorf("umask %03o: QSD's socket is %v, %s; want %v, created (QSD follows the umask)", umask, qsdMode, qsdHow, want)
		}
		ours, how := socketModeUnder(t, kindQbmond, umask)
		if ours != 0o600 || how != "renamed into place" {
			t.Errorf("umask %03o: qbmond's socket is %v, %s; want 0600, renamed into place", umask, ours, how)
		}
		t.Logf("umask %03o: QSD %v %s, qbmond %v %s", umask, qsdMode, qsdHow, ours, how)
	}
}

// socketModeUnder starts a daemon under umask and returns its socket's
// mode and how the socket appeared at its path.
func socketModeUnder(t *testing.T, k kind, umask int) (os.FileMode, string) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, "qmp.sock")
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.InotifyAddWatch(fd, dir, unix.IN_CREATE|unix.IN_MOVED_TO); err != nil {
		t.Fatal(err)
	}
	old := syscall.Umask(umask)
	d := startDaemon(t, k, dir)
	syscall.Umask(old)
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	how := "not seen"
	buf := make([]byte, 64<<10)
	n, _ := unix.Read(fd, buf)
	for off := 0; n > 0 && off+unix.SizeofInotifyEvent <= n; {
		ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
		name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)]), "\x00")
		if name == "qmp.sock" && how == "not seen" {
			switch {
			case ev.Mask&unix.IN_CREATE != 0:
				how = "created"
			case ev.Mask&unix.IN_MOVED_TO != 0:
				how = "renamed into place"
			}
		}
		off += unix.SizeofInotifyEvent + int(ev.Len)
	}
	if k == kindQbmond {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "qmp.sock" {
				t.Errorf("qbmond left %s next to its socket", e.Name())
			}
		}
	}
	d.stop()
	return fi.Mode().Perm(), how
}

// TestLongSocketPath: a socket path near the 107-byte limit works although
// the temporary path it is bound at first would be longer.
func TestLongSocketPath(t *testing.T) {
	dir := shortTempDir(t)
	sub := filepath.Join(dir, strings.Repeat("d", 100-len(dir)-len("/")-len("/q.sock")))
	sock := filepath.Join(sub, "q.sock")
	if len(sock) != 100 {
		t.Fatalf("path length %d", len(sock))
	}
	d := startDaemon(t, kindQbmond, dir, "--qmp", "unix:"+sock)
	c := dialNegotiate(t, "unix", sock)
	c.ok("query-version", nil)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket: %v %v", fi, err)
	}
	d.stop()
	if entries, _ := os.ReadDir(sub); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

// TestTCPWarning: a tcp listener has no authentication; qbmond says so in
// its log at start and in --help.
func TestTCPWarning(t *testing.T) {
	tcp := freePort(t)
	d := startDaemon(t, kindQbmond, "", "--qmp", "tcp:"+tcp, "--jsonrpc", "tcp:"+freePort(t))
	c := dialNegotiate(t, "tcp", tcp)
	c.ok("query-version", nil)
	d.stop()
	log := d.stderr.String()
	for _, what := range []string{"QMP", "JSON-RPC"} {
		if !strings.Contains(log, what+" on tcp has no authentication") {
			t.Errorf("no warning for %s on tcp in the log:\n%s", what, log)
		}
	}
	if n := strings.Count(log, "has no authentication"); n != 2 {
		t.Errorf("%d warnings, want 2 (none for the unix socket)", n)
	}
	out, _ := exec.Command(qbmondBin, "--help").CombinedOutput()
	if !strings.Contains(string(out), "tcp has NO authentication") {
		t.Errorf("--help does not warn about tcp:\n%s", out)
	}
}

// TestTooLongSocketPath: a path longer than a socket address holds is an
// error at start, not a socket nobody can connect to.
func TestTooLongSocketPath(t *testing.T) {
	dir := shortTempDir(t)
	sock := filepath.Join(dir, strings.Repeat("s", 120))
	out, err := exec.Command(qbmondBin, "--qmp", "unix:"+sock).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "path longer than 107 bytes") {
		t.Errorf("exit %v, output %s", err, out)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}
