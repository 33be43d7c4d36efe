// Package exports manages block exports and the NBD server behind them:
// the QMP commands nbd-server-start/-stop, block-export-add/-del, the
// legacy nbd-server-add/-remove, query-block-exports and the
// BLOCK_EXPORT_DELETED event. An export is a root user of its node (an
// edge with the export's permissions) served through package nbd.
package exports

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/internal/lockorder"
	"github.com/qbmond/qbmond/nbd"
	"github.com/qbmond/qbmond/qapi"
	"github.com/qbmond/qbmond/qmp"
)

// Manager owns the NBD server and the exports.
type Manager struct {
	g   *blockdev.Graph
	d   *qmp.Dispatcher
	log zerolog.Logger

	// mu is the export lock, taken before the graph lock.
	mu      lockorder.Mutex[lockorder.Exports]
	gone    sync.Map // export name → chan struct{} closed when its last client left
	srv     *nbd.Server
	serving chan struct{} // closed when the server's Serve returns
	exports []*export     // newest first, as QEMU lists them
}

type export struct {
	id, name     string
	node         *blockdev.Node
	root         *blockdev.Child
	bitmaps      []*blockdev.DirtyBitmap // exported, so busy until the export ends
	shuttingDown bool
	finished     bool
}

// New returns a manager for graph g that emits events through d.
func New(g *blockdev.Graph, d *qmp.Dispatcher, log zerolog.Logger) *Manager {
	return &Manager{g: g, d: d, log: log}
}

// RegisterCommands installs the export commands.
func (m *Manager) RegisterCommands() {
	qmp.RegisterTyped(m.d, "nbd-server-start", m.cmdServerStart)
	qmp.RegisterTyped(m.d, "nbd-server-stop", m.cmdServerStop)
	qmp.RegisterTyped(m.d, "block-export-add", m.cmdExportAdd)
	qmp.RegisterTyped(m.d, "block-export-del", m.cmdExportDel)
	qmp.RegisterTyped(m.d, "nbd-server-add", m.cmdServerAdd)
	qmp.RegisterTyped(m.d, "nbd-server-remove", m.cmdServerRemove)
	qmp.RegisterTyped(m.d, "query-block-exports", m.cmdQuery)
}

// Close stops the NBD server and removes every export (shutdown).
func (m *Manager) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopLocked()
}

// QEMU's defaults for the NBD server's limits.
const (
	defaultMaxConnections = 100
	handshakeTimeout      = 10 * time.Second
)

func (m *Manager) cmdServerStart(_ context.Context, a *qapi.NBDServerStartArgs) (*qapi.Empty, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv != nil {
		return nil, errors.New("NBD server already running")
	}
	var l net.Listener
	var err error
	switch a.Addr.Type {
	case qapi.SocketAddressTypeUnix:
		l, err = listenUnixNBD(&a.Addr.Unix.Data)
	case qapi.SocketAddressTypeInet:
		l, err = listenInetNBD(&a.Addr.Inet.Data)
	case qapi.SocketAddressTypeFd:
		// QSD has no monitor to pass descriptors through (getfd), so no
		// name or number can name one.
		return nil, errors.New("only QEMU supports file descriptor passing")
	case qapi.SocketAddressTypeVsock:
		err = probeVsockNBD(a.Addr.Vsock.Data.CID, a.Addr.Vsock.Data.Port)
	default:
		return nil, fmt.Errorf("socket address type '%s' is not supported by qbmond", a.Addr.Type)
	}
	if err != nil {
		return nil, err
	}
	srv := nbd.NewServer(m.log)
	// QSD 7.2 (with the CVE-2024-7409 fixes) serves at most 100 clients
	// unless told otherwise (0: no limit) and drops a client that has not
	// negotiated within 10 s.
	srv.MaxConnections = defaultMaxConnections
	if a.MaxConnections != nil {
		srv.MaxConnections = int(*a.MaxConnections)
	}
	srv.HandshakeTimeout = handshakeTimeout
	srv.OnExportDeleted = m.onDeleted
	m.srv, m.serving = srv, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		if err := srv.Serve(l); err != nil {
			m.log.Error().Err(err).Msg("NBD server stopped")
		}
	}(m.serving)
	return nil, nil
}

func (m *Manager) cmdServerStop(context.Context, *qapi.Empty) (*qapi.Empty, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.srv == nil {
		return nil, errors.New("NBD server not running")
	}
	m.stopLocked()
	return nil, nil
}

// stopLocked removes every NBD export (disconnecting clients), waits for
// their clients to go and stops the server, as QEMU's nbd-server-stop does.
func (m *Manager) stopLocked() {
	if m.srv == nil {
		return
	}
	all := append([]*export(nil), m.exports...)
	gones := make([]<-chan struct{}, len(all))
	for i := len(all) - 1; i >= 0; i-- {
		gones[i] = m.beginRemoval(all[i])
	}
	for i := len(all) - 1; i >= 0; i-- {
		<-gones[i]
		m.finishLocked(all[i])
	}
	m.srv.Close()
	<-m.serving
	m.srv, m.serving = nil, nil
}

func (m *Manager) cmdExportAdd(_ context.Context, a *qapi.BlockExportOptions) (*qapi.Empty, error) {
	return nil, m.add(a, false)
}

// add creates an export, checking in QEMU's order: the id, the node, its
// writability, the permissions, the server, the export name, the
// permissions again. legacy is nbd-server-add: the node is looked up as
// a device name too, and a read-only node is exported read-only instead of
// refusing writable.
func (m *Manager) add(a *qapi.BlockExportOptions, legacy bool) error {
	opts := a.NBD // the only type of export there is
	if opts == nil {
		opts = new(qapi.BlockExportOptionsNbd)
	}
	writable := qapi.Deref(a.Writable)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.find(a.ID) != nil {
		return fmt.Errorf("Block export id '%s' is already in use", a.ID)
	}
	return m.g.Do(func(lk *blockdev.Locked) error {
		node := lk.Lookup(a.NodeName)
		if node == nil {
			if legacy {
				return fmt.Errorf("Cannot find device='%s' nor node-name='%s'", a.NodeName, a.NodeName)
			}
			return fmt.Errorf("Cannot find device='' nor node-name='%s'", a.NodeName)
		}
		if legacy && node.ReadOnly() {
			writable = false
		}
		if writable && node.ReadOnly() {
			return errors.New("Cannot export read-only node as writable")
		}
		// The export's BlockBackend is attached sharing everything, before
		// the server is looked for (QEMU's blk_exp_add); once the NBD export
		// is set up it stops sharing resize (nbd_export_create), a second
		// step that can conflict in its own right.
		perm := blockdev.PermConsistentRead
		if writable {
			perm |= blockdev.PermWrite
		}
		root, err := lk.AttachRoot(node, "an unnamed block device", perm, blockdev.PermAll)
		if err != nil {
			return err
		}
		if err := m.checkNBD(a.NodeName, opts); err != nil {
			lk.DetachRoot(root)
			return err
		}
		name := a.NodeName
		if opts.Name != nil {
			name = *opts.Name
		}
		if err := lk.SetRootPerm(root, perm, blockdev.PermAll&^blockdev.PermResize); err != nil {
			lk.DetachRoot(root)
			return err
		}
		bitmaps, err := m.exportBitmaps(lk, node, opts.Bitmaps, writable)
		if err != nil {
			lk.DetachRoot(root)
			return err
		}
		names := make([]string, len(bitmaps))
		for i, b := range bitmaps {
			names[i] = b.Name()
		}
		be := &nodeBackend{root: root, writable: writable, writethrough: qapi.Deref(a.Writethrough), bitmaps: bitmaps}
		ex := &nbd.Export{Name: name, Backend: be, Writable: writable, AllocationDepth: qapi.Deref(opts.AllocationDepth), Bitmaps: names}
		// nil: no description; "" is sent as an empty one.
		if opts.Description != nil {
			ex.Description, ex.DescriptionSet = *opts.Description, true
		}
		err = m.srv.AddExport(ex)
		if err != nil {
			lk.DetachRoot(root)
			return err
		}
		for _, b := range bitmaps {
			b.Acquire()
		}
		m.exports = append([]*export{{id: a.ID, name: name, node: node, root: root, bitmaps: bitmaps}}, m.exports...)
		return nil
	})
}

// checkNBD checks what the NBD export adds to a block export, as QEMU's
// nbd_export_create: a running server, and an export name and
// description within the protocol's limits, the name not yet taken.
func (m *Manager) checkNBD(nodeName string, opts *qapi.BlockExportOptionsNbd) error {
	if m.srv == nil {
		return errors.New("NBD server not running")
	}
	name := nodeName
	if opts.Name != nil {
		name = *opts.Name
	}
	if len(name) > 4096 {
		return fmt.Errorf("export name '%s' too long", name)
	}
	if opts.Description != nil && len(*opts.Description) > 4096 {
		return fmt.Errorf("description '%s' too long", *opts.Description)
	}
	for _, e := range m.exports {
		if e.name == name {
			return fmt.Errorf("NBD server already has export named '%s'", name)
		}
	}
	return nil
}

// exportBitmaps finds the bitmaps an export offers, as QEMU does: a name
// is looked up on the node and down its backing chain, {node, name}
// anywhere; none may be busy or inconsistent, and a read-only export of a
// writable node only takes bitmaps that do not record (they would change
// under the client).
func (m *Manager) exportBitmaps(lk *blockdev.Locked, node *blockdev.Node, refs []qapi.BlockDirtyBitmapOrStr, writable bool) ([]*blockdev.DirtyBitmap, error) {
	var out []*blockdev.DirtyBitmap
	for _, r := range refs {
		var b *blockdev.DirtyBitmap
		if r.External != nil {
			var err error
			if _, b, err = lk.LookupBitmap(r.External.Node, r.External.Name); err != nil {
				return nil, err
			}
		} else {
			name := qapi.Deref(r.Local)
			for n := node; n != nil && b == nil; n = n.BackingNode() {
				b = n.DirtyBitmap(name)
			}
			if b == nil {
				return nil, fmt.Errorf("Bitmap '%s' is not found", name)
			}
		}
		if err := b.Check(blockdev.CheckAllowReadOnly); err != nil {
			return nil, err
		}
		if !writable && !node.ReadOnly() && b.Recording() {
			return nil, fmt.Errorf("Enabled bitmap '%s' incompatible with readonly export", b.Name())
		}
		out = append(out, b)
	}
	return out, nil
}

func (m *Manager) find(id string) *export {
	for _, e := range m.exports {
		if e.id == id {
			return e
		}
	}
	return nil
}

func (m *Manager) cmdExportDel(_ context.Context, a *qapi.BlockExportDelArgs) (*qapi.Empty, error) {
	return nil, m.del(a.ID, string(qapi.Deref(a.Mode)))
}

// disconnectGrace is how long a safe block-export-del waits for clients
// whose connection is closing: a client that has just sent NBD_CMD_DISC,
// or exited, is gone for whoever deletes the export after it.
const disconnectGrace = 200 * time.Millisecond

// clientsGone tells whether the export has no clients, waiting a little
// for connections that are being torn down.
func (m *Manager) clientsGone(name string) bool {
	deadline := time.Now().Add(disconnectGrace)
	for m.srv.Clients(name) > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return true
}

func (m *Manager) del(id, mode string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.find(id)
	if e == nil {
		return fmt.Errorf("Export '%s' is not found", id)
	}
	if e.shuttingDown {
		return fmt.Errorf("Export '%s' is already shutting down", id)
	}
	if mode != "hard" && !m.clientsGone(e.name) {
		return qmp.Errorf("export '%s' still in use", id)
	}
	gone := m.beginRemoval(e)
	select {
	case <-gone:
		m.finishLocked(e) // no clients: the event precedes the reply
	default:
		// Clients are being disconnected; the export is listed as
		// shutting down until the last one has gone.
		go func() {
			<-gone
			m.mu.Lock()
			defer m.mu.Unlock()
			m.finishLocked(e)
		}()
	}
	return nil
}

// beginRemoval takes an export off the server, disconnecting its clients,
// and returns a channel closed once the last of them has gone.
func (m *Manager) beginRemoval(e *export) <-chan struct{} {
	if ch, ok := m.gone.Load(e.name); ok && e.shuttingDown {
		return ch.(chan struct{})
	}
	e.shuttingDown = true
	gone := make(chan struct{})
	m.gone.Store(e.name, gone)
	if err := m.srv.RemoveExport(e.name, true); err != nil {
		m.log.Warn().Err(err).Str("export", e.id).Msg("removing export")
		m.onDeleted(e.name)
	}
	return gone
}

// onDeleted is the NBD server's word that an export's last client is gone.
// It may run inside RemoveExport (with m.mu held) or on a connection's
// goroutine, so it only signals.
func (m *Manager) onDeleted(name string) {
	if ch, ok := m.gone.LoadAndDelete(name); ok {
		close(ch.(chan struct{}))
	}
}

// finishLocked releases a removed export's node and emits
// BLOCK_EXPORT_DELETED, once.
func (m *Manager) finishLocked(e *export) {
	if e.finished {
		return
	}
	e.finished = true
	m.g.Do(func(lk *blockdev.Locked) error {
		for _, b := range e.bitmaps {
			b.Release()
		}
		lk.RemoveBackend(e.root)
		return nil
	})
	for i, x := range m.exports {
		if x == e {
			m.exports = append(m.exports[:i], m.exports[i+1:]...)
			break
		}
	}
	m.d.Emit("BLOCK_EXPORT_DELETED", map[string]string{"id": e.id})
}

// cmdServerAdd is nbd-server-add: block-export-add of an NBD export
// whose id is its name, with QEMU's legacy lookups (see add).
func (m *Manager) cmdServerAdd(_ context.Context, a *qapi.NbdServerAddOptions) (*qapi.Empty, error) {
	name := a.Device
	if a.Name != nil {
		name = *a.Name
	}
	opts := &qapi.BlockExportOptionsNbd{}
	opts.Name, opts.Description = &name, a.Description
	if a.Bitmap != nil {
		opts.Bitmaps = []qapi.BlockDirtyBitmapOrStr{{Local: a.Bitmap}}
	}
	ea := &qapi.BlockExportOptions{Type: qapi.BlockExportTypeNBD, ID: name, NodeName: a.Device,
		Writable: a.Writable, NBD: opts}
	return nil, m.add(ea, true)
}

func (m *Manager) cmdServerRemove(_ context.Context, a *qapi.NBDServerRemoveArgs) (*qapi.Empty, error) {
	return nil, m.del(a.Name, string(qapi.Deref(a.Mode)))
}

func (m *Manager) cmdQuery(context.Context, *qapi.Empty) ([]qapi.BlockExportInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]qapi.BlockExportInfo, 0, len(m.exports))
	for _, e := range m.exports {
		out = append(out, qapi.BlockExportInfo{ID: e.id, Type: qapi.BlockExportTypeNBD, NodeName: e.root.Node().Name(), ShuttingDown: e.shuttingDown})
	}
	return out, nil
}
