package file_test

import (
	"fmt"
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/drivers/drivertest"
)

// loopDevice attaches a fresh 4 MiB image to a free loop device and
// detaches it when the test ends. It talks to the kernel as losetup does,
// without running it: a process forked while another test has its image
// open would hold that image's lock until it execs.
func loopDevice(t *testing.T) (string, error) {
	img := drivertest.Image(t, 4<<20)
	ctl, err := unix.Open("/dev/loop-control", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(ctl)
	for range 10 {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := fmt.Sprintf("/dev/loop%d", n)
		lfd, err := unix.Open(dev, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return "", err
		}
		ffd, err := unix.Open(img, unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			unix.Close(lfd)
			return "", err
		}
		err = unix.IoctlSetInt(lfd, unix.LOOP_SET_FD, ffd)
		unix.Close(ffd)
		if err == unix.EBUSY { // taken meanwhile
			unix.Close(lfd)
			continue
		}
		if err != nil {
			unix.Close(lfd)
			return "", fmt.Errorf("LOOP_SET_FD %s: %w", dev, err)
		}
		t.Cleanup(func() {
			if err := unix.IoctlSetInt(lfd, unix.LOOP_CLR_FD, 0); err != nil {
				t.Errorf("detaching %s: %v", dev, err)
			}
			unix.Close(lfd)
		})
		return dev, nil
	}
	return "", fmt.Errorf("no free loop device")
}

// host_device over a loop device (it needs a block device: root and
// loop devices).
func TestConformanceHostDevice(t *testing.T) {
	if _, err := loopDevice(t); err != nil {
		// Like a missing tool: a failure unless skipping was asked for.
		if os.Getenv("QBMOND_ALLOW_MISSING_TOOLS") == "1" {
			t.Skipf("host_device needs a block device, and there is no loop device to make one: %v", err)
		}
		t.Fatalf("host_device needs a block device, and there is no loop device to make one (set QBMOND_ALLOW_MISSING_TOOLS=1 to skip): %v", err)
	}
	drivertest.Run(t, drivertest.Config{
		Options: func(t *testing.T) blockdev.Options {
			dev, err := loopDevice(t)
			if err != nil {
				t.Fatal(err)
			}
			return blockdev.Options{"driver": "host_device", "filename": dev}
		},
		Stores: true,
		// The kernel refuses a discard of part of a sector with EINVAL,
		// and QEMU's host_device passes that on.
		DiscardAlign: 512,
	})
}
