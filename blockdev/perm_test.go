package blockdev_test

import (
	"testing"

	"github.com/qbmond/qbmond/blockdev"
)

func TestDefaultChildPerm(t *testing.T) {
	const (
		cr  = blockdev.PermConsistentRead
		w   = blockdev.PermWrite
		wu  = blockdev.PermWriteUnchanged
		rs  = blockdev.PermResize
		all = blockdev.PermAll
	)
	for _, tc := range []struct {
		name               string
		role               blockdev.Role
		writable           bool
		perm, shared       blockdev.Perm
		wantPerm, wantShrd blockdev.Perm
	}{
		// Matches the edges QSD 7.2 shows for qcow2 over file: with no
		// users above, perm consistent-read+write+resize, shared
		// consistent-read+write-unchanged.
		{"image, writable, unused", blockdev.RoleImage, true, 0, all, cr | w | rs, cr | wu},
		{"image, read-only, unused", blockdev.RoleImage, false, 0, all, cr, cr | wu},
		// raw over file: a filter passes everything through.
		{"filtered", blockdev.RoleFiltered | blockdev.RolePrimary, true, cr | w, cr | wu, cr | w, cr | wu},
		// raw with offset: data role, resize never shared, write implies resize.
		{"data, unused", blockdev.RoleData | blockdev.RolePrimary, true, 0, all, 0, cr | w | wu},
		{"data, writer", blockdev.RoleData | blockdev.RolePrimary, true, w, all, w | rs, cr | w | wu},
		{"data, write-unchanged", blockdev.RoleData, true, wu, all, w | wu | rs, cr | w | wu},
		// backing files: read only; writable and resizable by others only
		// if the parent's users tolerate writes.
		{"cow, tolerant", blockdev.RoleCOW, true, cr | w, all, cr, all},
		{"cow, strict", blockdev.RoleCOW, true, cr, cr, cr, cr | wu},
	} {
		p, s := blockdev.DefaultChildPerm(tc.role, tc.writable, tc.perm, tc.shared)
		if p != tc.wantPerm || s != tc.wantShrd {
			t.Errorf("%s: got %v / %v, want %v / %v", tc.name, p.Names(), s.Names(), tc.wantPerm.Names(), tc.wantShrd.Names())
		}
	}
}

func TestPermString(t *testing.T) {
	if got := (blockdev.PermResize | blockdev.PermWrite).String(); got != "write, resize" {
		t.Fatalf("got %q", got)
	}
	if got := blockdev.Perm(0).Names(); got == nil || len(got) != 0 {
		t.Fatalf("empty set must be an empty list, got %#v", got)
	}
}
