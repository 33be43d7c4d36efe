package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// pidfileOutcome is what one daemon kind did with --pidfile.
type pidfileOutcome struct {
	mode         os.FileMode
	secondStatus int    // exit status of a second daemon given the same file
	secondErr    string // its error line, program name removed
	keptFirstPID bool   // the file still names the first daemon afterwards
	removedAtEnd bool   // the first daemon removed it at exit
}

// TestPidfileLockedQSD: the pid file is locked as QSD's is (a second
// daemon refuses to start with QSD's message and leaves the file to the
// first), created 0600, and removed when the first daemon exits.
func TestPidfileLockedQSD(t *testing.T) {
	qsd := pidfileScenario(t, kindQSD)
	ours := pidfileScenario(t, kindQbmond)
	if *qsd != *ours {
		t.Errorf("qbmond and QSD differ\nqbmond: %+v\nQSD:    %+v", *ours, *qsd)
	}
	if qsd.mode != 0o600 || qsd.secondStatus != 1 || !qsd.keptFirstPID || !qsd.removedAtEnd {
		t.Errorf("QSD's behaviour changed: %+v", *qsd)
	}
}

func pidfileScenario(t *testing.T, k kind) *pidfileOutcome {
	dir := shortTempDir(t)
	pidfile := filepath.Join(dir, "d.pid")
	d := startDaemon(t, k, dir, "--pidfile", pidfile)
	want := strconv.Itoa(d.cmd.Process.Pid) + "\n"
	var got []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, _ = os.ReadFile(pidfile)
		if string(got) == want || time.Now().After(deadline) {
			break
		}
	}
	if string(got) != want {
		t.Fatalf("%s: pid file holds %q, want %q", k, got, want)
	}
	fi, err := os.Stat(pidfile)
	if err != nil {
		t.Fatal(err)
	}
	o := &pidfileOutcome{mode: fi.Mode().Perm()}

	bin := qbmondBin
	if k == kindQSD {
		bin = requireTool(t, "qemu-storage-daemon")
	}
	second := filepath.Join(dir, "second.sock")
	cmd := exec.Command(bin, "--chardev", "socket,path="+second+",server=on,wait=off,id=m2",
		"--monitor", "chardev=m2", "--pidfile", pidfile)
	cmd.Dir = dir
	var stderr lockedBuffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s: a second daemon with the same pid file kept running\n%s", k, stderr.String())
	}
	o.secondStatus = cmd.ProcessState.ExitCode()
	line := strings.TrimSpace(stderr.String())
	_, o.secondErr, _ = strings.Cut(line, ": ")
	t.Logf("%s: second daemon: status %d, %q", k, o.secondStatus, line)
	if k == kindQbmond {
		// QSD leaves the second daemon's socket behind; qbmond must not.
		if _, err := os.Stat(second); err == nil {
			t.Errorf("qbmond: the refused daemon left %s behind", second)
		}
	}
	got, _ = os.ReadFile(pidfile)
	o.keptFirstPID = string(got) == want
	d.stop()
	_, err = os.Stat(pidfile)
	o.removedAtEnd = os.IsNotExist(err)
	return o
}
