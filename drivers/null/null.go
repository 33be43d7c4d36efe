// Package null implements the null-co and null-aio drivers: protocol nodes
// with no storage, for tests and benchmarks. Writes are dropped; reads
// return zeroes only with read-zeroes=on (otherwise the buffer is left
// as it is, as in QEMU).
package null

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qbmond/qbmond/blockdev"
)

func init() {
	blockdev.RegisterDriver("null-co", func() blockdev.Driver { return &Driver{name: "null-co"} })
	blockdev.RegisterDriver("null-aio", func() blockdev.Driver { return &Driver{name: "null-aio"} })
}

// DefaultSize is the size of a null node without a size option: 1 GiB.
const DefaultSize = 1 << 30

// Driver is a null-co or null-aio node. The two behave the same in qbmond
// (QEMU's differ only in how completions are scheduled).
type Driver struct {
	name      string
	size      int64
	zeroes    bool
	latency   time.Duration
	plainName bool // only options that leave the file name "null-co://"
}

// Open reads size, read-zeroes and latency-ns.
func (d *Driver) Open(ctx context.Context, oc *blockdev.OpenContext) error {
	o := oc.Options()
	size, ok, err := o.Int("size")
	if err != nil {
		return err
	}
	if !ok {
		size = DefaultSize
	}
	if size < 0 {
		return errors.New("Parameter 'size' expects a non-negative number below 2^64")
	}
	d.size = size
	if d.zeroes, err = o.Bool("read-zeroes", false); err != nil {
		return err
	}
	lat, ok, err := o.Int("latency-ns")
	if err != nil {
		return err
	}
	if ok {
		if lat < 0 {
			return fmt.Errorf("latency-ns is invalid")
		}
		d.latency = time.Duration(lat)
	}
	d.plainName = !o.Has("size") && !o.Has("read-zeroes")
	return nil
}

// Close does nothing.
func (d *Driver) Close() error { return nil }

func (d *Driver) wait(ctx context.Context) error {
	if d.latency <= 0 {
		return nil
	}
	t := time.NewTimer(d.latency)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Read zeroes p with read-zeroes=on.
func (d *Driver) Read(ctx context.Context, off int64, p []byte) error {
	if d.zeroes {
		clear(p)
	}
	return d.wait(ctx)
}

// Write drops the data.
func (d *Driver) Write(ctx context.Context, off int64, p []byte, flags blockdev.ReqFlags) error {
	return d.wait(ctx)
}

// WriteZeroes does nothing.
func (d *Driver) WriteZeroes(ctx context.Context, off, n int64, flags blockdev.ReqFlags) error {
	return d.wait(ctx)
}

// Discard does nothing.
func (d *Driver) Discard(ctx context.Context, off, n int64) error { return d.wait(ctx) }

// Flush does nothing.
func (d *Driver) Flush(ctx context.Context) error { return d.wait(ctx) }

// BlockStatus reports the whole range as zero with read-zeroes=on.
func (d *Driver) BlockStatus(ctx context.Context, off, n int64) (blockdev.BlockStatus, error) {
	st := blockdev.BlockStatus{Length: n}
	if d.zeroes {
		st.Flags = blockdev.StatusZero
	}
	return st, nil
}

// Length returns the size option.
func (d *Driver) Length(ctx context.Context) (int64, error) { return d.size, nil }

// Info: null nodes have no driver information.
func (d *Driver) Info(ctx context.Context) (blockdev.DriverInfo, error) {
	return blockdev.DriverInfo{}, blockdev.ErrNotSupported
}

// Protocol marks null as a protocol driver.
func (d *Driver) Protocol() {}

// AllocatedSize is always 0.
func (d *Driver) AllocatedSize(ctx context.Context) (int64, error) { return 0, nil }

// StrongOptions: size and read-zeroes change what the node presents.
func (d *Driver) StrongOptions() []string { return []string{"size", "read-zeroes"} }

// ExactFilename is "null-co://" (or "null-aio://") unless size or
// read-zeroes were given.
func (d *Driver) ExactFilename() string {
	if d.plainName {
		return d.name + "://"
	}
	return ""
}

// A null node reopens (to change its generic options); its own options
// stay as they are.
func (d *Driver) ReopenPrepare(ctx context.Context, rs *blockdev.ReopenState) error { return nil }

// ReopenCommit has nothing to do.
func (d *Driver) ReopenCommit(rs *blockdev.ReopenState) {}

// ReopenAbort has nothing to undo.
func (d *Driver) ReopenAbort(rs *blockdev.ReopenState) {}
