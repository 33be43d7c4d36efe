package blockdev

import "strings"

// Perm is a set of permissions a user of a node holds or lets others hold,
// modelled on QEMU's BLK_PERM_* bits.
type Perm uint64

// The permissions QEMU 7.2 knows, in the order it names them.
const (
	// PermConsistentRead: the user needs reads to return data that stays
	// consistent (nobody writes underneath behind its back).
	PermConsistentRead Perm = 1 << iota
	// PermWrite: the user writes data that may change the guest-visible
	// content.
	PermWrite
	// PermWriteUnchanged: the user writes only data that leaves the content
	// unchanged (copy-on-read, for instance).
	PermWriteUnchanged
	// PermResize: the user changes the length of the node.
	PermResize

	// PermAll is every permission.
	PermAll = PermConsistentRead | PermWrite | PermWriteUnchanged | PermResize
)

var permNames = [...]string{"consistent-read", "write", "write-unchanged", "resize"}

// Names lists the permissions in QEMU's order (consistent-read, write,
// write-unchanged, resize).
func (p Perm) Names() []string {
	names := make([]string, 0, len(permNames))
	for i, n := range permNames {
		if p&(1<<i) != 0 {
			names = append(names, n)
		}
	}
	return names
}

// String names the permissions as QEMU's error messages do, in words
// rather than QAPI names: "consistent read, write unchanged".
func (p Perm) String() string {
	return strings.ReplaceAll(strings.Join(p.Names(), ", "), "-", " ")
}

// Role describes what a child is to its parent, like QEMU's BdrvChildRole.
type Role uint32

const (
	// RoleData: the child holds guest-visible data.
	RoleData Role = 1 << iota
	// RoleMetadata: the child holds the parent's metadata.
	RoleMetadata
	// RoleFiltered: the parent is a filter that passes the child's data
	// through unchanged.
	RoleFiltered
	// RoleCOW: the child is a backing file the parent reads unallocated
	// areas from.
	RoleCOW
	// RolePrimary: the primary child (bs->file or the filtered child).
	RolePrimary

	// RoleImage is the role of an image file under a format driver without
	// an external data file: data, metadata and primary.
	RoleImage = RoleData | RoleMetadata | RolePrimary
)

// DefaultChildPerm returns the permissions a parent node needs on a child
// of the given role, and those it lets others hold, given the cumulative
// permissions the parent's own users hold (perm) and share (shared). It
// follows QEMU's default rules: filters pass permissions through; storage
// children (data/metadata) additionally keep others from resizing and, for
// metadata, from writing; COW children are only read.
// writable tells whether the parent node is writable.
func DefaultChildPerm(role Role, writable bool, perm, shared Perm) (Perm, Perm) {
	switch {
	case role&RoleFiltered != 0:
		return perm & PermAll, shared & PermAll
	case role&RoleCOW != 0:
		perm &= PermConsistentRead
		if shared&PermWrite != 0 {
			shared = PermWrite | PermResize
		} else {
			shared = 0
		}
		shared |= PermConsistentRead | PermWriteUnchanged
		return perm, shared
	case role&(RoleData|RoleMetadata) != 0:
		if role&RoleMetadata != 0 {
			if writable {
				perm |= PermWrite | PermResize
			}
			perm |= PermConsistentRead
			shared &^= PermWrite | PermResize
		}
		if role&RoleData != 0 {
			shared &^= PermResize
			if perm&PermWriteUnchanged != 0 {
				perm |= PermWrite
			}
			if perm&PermWrite != 0 {
				perm |= PermResize
			}
		}
		return perm, shared
	}
	return perm, shared
}
