package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

var be = binary.BigEndian

// errAbort ends a session the client closed with NBD_OPT_ABORT.
var errAbort = errors.New("nbd: client aborted the handshake")

// handshake runs the fixed newstyle negotiation. On success the connection
// is attached to an export and ready for transmission.
func (c *conn) handshake() error {
	var greet [18]byte
	be.PutUint64(greet[0:], nbdMagic)
	be.PutUint64(greet[8:], optMagic)
	be.PutUint16(greet[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := c.nc.Write(greet[:]); err != nil {
		return err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return err
	}
	flags := be.Uint32(cf[:])
	if flags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return fmt.Errorf("nbd: unknown client flags %#x", flags)
	}
	c.noZeroes = flags&flagCNoZeroes != 0

	var hdr [16]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if m := be.Uint64(hdr[0:]); m != optMagic {
			return fmt.Errorf("nbd: bad option magic %#x", m)
		}
		opt := be.Uint32(hdr[8:])
		length := be.Uint32(hdr[12:])
		if length > maxOptionLen {
			return fmt.Errorf("nbd: option %d with %d bytes of data is too long", opt, length)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			return err
		}
		done, err := c.option(opt, data)
		if err != nil || done {
			return err
		}
	}
}

// option handles one option; done means transmission starts.
func (c *conn) option(opt uint32, data []byte) (done bool, err error) {
	if c.srv.isClosed() && opt != optAbort {
		return false, c.optError(opt, repErrShutdown, "server is shutting down")
	}
	switch opt {
	case optExportName:
		return c.optExportName(data)
	case optAbort:
		// Ignore any data, as the document asks; the client may be gone already.
		_ = c.optReply(opt, repAck, nil)
		return false, errAbort
	case optList:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "NBD_OPT_LIST must not carry data")
		}
		for _, ex := range c.srv.list() {
			p := make([]byte, 4, 4+len(ex.Name)+len(ex.Description))
			be.PutUint32(p, uint32(len(ex.Name)))
			p = append(p, ex.Name...)
			p = append(p, ex.Description...)
			if err := c.optReply(opt, repServer, p); err != nil {
				return false, err
			}
		}
		return false, c.optReply(opt, repAck, nil)
	case optStartTLS:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "NBD_OPT_STARTTLS must not carry data")
		}
		return false, c.optError(opt, repErrPolicy, "TLS not configured")
	case optInfo, optGo:
		return c.optInfo(opt, data)
	case optStructuredReply:
		if len(data) != 0 {
			return false, c.optError(opt, repErrInvalid, "NBD_OPT_STRUCTURED_REPLY must not carry data")
		}
		if c.structured {
			return false, c.optError(opt, repErrInvalid, "structured replies already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt, data)
	default:
		return false, c.optError(opt, repErrUnsup, fmt.Sprintf("unsupported option %d", opt))
	}
}

func (c *conn) optExportName(data []byte) (bool, error) {
	name := string(data)
	if len(name) > maxStringLen {
		return false, errors.New("nbd: export name too long")
	}
	ex := c.srv.attach(c, name)
	if ex == nil {
		return false, fmt.Errorf("nbd: client asked for unknown export %q", name)
	}
	c.enter(ex, name)
	out := make([]byte, 10, 10+124)
	be.PutUint64(out, uint64(c.size))
	be.PutUint16(out[8:], c.flags)
	if !c.noZeroes {
		out = out[:10+124]
	}
	_, err := c.nc.Write(out)
	return err == nil, err
}

// parseName reads a 32-bit length and a string of that length from p.
func parseName(p []byte) (name string, rest []byte, ok bool) {
	if len(p) < 4 {
		return "", nil, false
	}
	n := be.Uint32(p)
	if uint64(n) > uint64(len(p)-4) {
		return "", nil, false
	}
	return string(p[4 : 4+n]), p[4+n:], true
}

func (c *conn) optInfo(opt uint32, data []byte) (bool, error) {
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 2 || len(rest) != 2+2*int(be.Uint16(rest)) {
		return false, c.optError(opt, repErrInvalid, "malformed NBD_OPT_INFO/NBD_OPT_GO request")
	}
	if len(name) > maxStringLen {
		return false, c.optError(opt, repErrInvalid, "export name too long")
	}
	var wantName, wantDesc bool
	for i := 2; i < len(rest); i += 2 {
		switch be.Uint16(rest[i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	var ex *export
	if opt == optGo {
		ex = c.srv.attach(c, name)
	} else {
		ex = c.srv.lookup(name)
	}
	if ex == nil {
		return false, c.optError(opt, repErrUnknown, fmt.Sprintf("export '%s' not present", name))
	}
	size, flags := c.exportInfo(ex)
	p := make([]byte, 12)
	be.PutUint16(p, infoExport)
	be.PutUint64(p[2:], uint64(size))
	be.PutUint16(p[10:], flags)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return false, err
	}
	if wantName {
		if err := c.optReply(opt, repInfo, infoString(infoName, ex.Name)); err != nil {
			return false, err
		}
	}
	if wantDesc && ex.Description != "" {
		if err := c.optReply(opt, repInfo, infoString(infoDescription, ex.Description)); err != nil {
			return false, err
		}
	}
	minB, prefB, maxB := blockSizes(ex.Backend)
	p = make([]byte, 14)
	be.PutUint16(p, infoBlockSize)
	be.PutUint32(p[2:], minB)
	be.PutUint32(p[6:], prefB)
	be.PutUint32(p[10:], maxB)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return false, err
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		c.enter(ex, name)
		return true, nil
	}
	return false, nil
}

func infoString(typ uint16, s string) []byte {
	p := make([]byte, 2, 2+len(s))
	be.PutUint16(p, typ)
	return append(p, s...)
}

// optMetaContext handles NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
func (c *conn) optMetaContext(opt uint32, data []byte) error {
	set := opt == optSetMetaContext
	if set {
		// A SET replaces the selection even when it fails.
		c.meta, c.metaExport = nil, ""
	}
	if !c.structured {
		return c.optError(opt, repErrInvalid, "structured replies not negotiated")
	}
	name, rest, ok := parseName(data)
	if !ok || len(rest) < 4 {
		return c.optError(opt, repErrInvalid, "malformed metadata context request")
	}
	nq := be.Uint32(rest)
	rest = rest[4:]
	var queries []string
	for range nq {
		q, r, ok := parseName(rest)
		if !ok {
			return c.optError(opt, repErrInvalid, "malformed metadata context request")
		}
		if len(q) > maxStringLen {
			return c.optError(opt, repErrInvalid, "metadata context query too long")
		}
		queries = append(queries, q)
		rest = r
	}
	if len(rest) != 0 || len(name) > maxStringLen {
		return c.optError(opt, repErrInvalid, "malformed metadata context request")
	}
	ex := c.srv.lookup(name)
	if ex == nil {
		return c.optError(opt, repErrUnknown, fmt.Sprintf("export '%s' not present", name))
	}
	ids := matchContexts(ex, queries, set)
	for _, id := range ids {
		name := contextName(ex, id)
		p := make([]byte, 4, 4+len(name))
		if set {
			be.PutUint32(p, id)
		}
		p = append(p, name...)
		if err := c.optReply(opt, repMetaContext, p); err != nil {
			return err
		}
	}
	if set {
		c.meta, c.metaExport = ids, name
	}
	return c.optReply(opt, repAck, nil)
}

func contextName(ex *export, id uint32) string {
	switch {
	case id == idAllocDepth:
		return ctxAllocDepth
	case id >= idBitmapBase && int(id-idBitmapBase) < len(ex.Bitmaps):
		return ctxBitmapPrefix + ex.Bitmaps[id-idBitmapBase]
	}
	return ctxBaseAllocation
}

// matchContexts returns the IDs of the contexts of ex that the queries name
// (for a list, a bare namespace "ns:", "qemu:dirty-bitmap:" for every
// bitmap, or no query at all match more than one).
func matchContexts(ex *export, queries []string, set bool) []uint32 {
	avail := []uint32{idBaseAllocation}
	if ex.AllocationDepth {
		avail = append(avail, idAllocDepth)
	}
	for i := range ex.Bitmaps {
		avail = append(avail, idBitmapBase+uint32(i))
	}
	if len(queries) == 0 {
		if set {
			return nil
		}
		return avail
	}
	var out []uint32
	for _, id := range avail {
		name := contextName(ex, id)
		ns := name[:strings.IndexByte(name, ':')+1]
		for _, q := range queries {
			if q == name || (!set && (q == ns || q == ctxBitmapPrefix && id >= idBitmapBase)) {
				out = append(out, id)
				break
			}
		}
	}
	return out
}

// optReply sends one option reply.
func (c *conn) optReply(opt, typ uint32, data []byte) error {
	p := make([]byte, 20, 20+len(data))
	be.PutUint64(p, repMagic)
	be.PutUint32(p[8:], opt)
	be.PutUint32(p[12:], typ)
	be.PutUint32(p[16:], uint32(len(data)))
	_, err := c.nc.Write(append(p, data...))
	return err
}

func (c *conn) optError(opt, typ uint32, msg string) error {
	c.srv.log.Debug().Uint32("option", opt).Str("error", msg).Msg("nbd: option refused")
	return c.optReply(opt, typ, []byte(msg))
}

// exportInfo returns the size and transmission flags c would use for ex.
func (c *conn) exportInfo(ex *export) (int64, uint16) {
	b := ex.Backend
	f := uint16(flagHasFlags | flagSendFlush | flagSendFUA | flagSendCache)
	if !ex.Writable || b.ReadOnly() {
		f |= flagReadOnly
	} else {
		f |= flagSendTrim | flagSendWriteZeroes | flagSendFastZero
	}
	if c.structured {
		f |= flagSendDF
	}
	if b.CanMultiConn() {
		f |= flagCanMultiConn
	}
	size := b.Size()
	if size < 0 {
		size = 0
	}
	return size, f
}

// enter fixes what transmission needs from the export the client chose.
func (c *conn) enter(ex *export, name string) {
	c.size, c.flags = c.exportInfo(ex)
	_, _, c.maxBlock = blockSizes(ex.Backend)
	if c.metaExport != name {
		c.meta = nil
	}
}

// blockSizes returns the backend's block sizes made valid for the protocol,
// with the maximum capped to the 32 MiB payload limit.
func blockSizes(b Backend) (minimum, preferred, maximum uint32) {
	minimum, preferred, maximum = b.BlockSizes()
	if minimum == 0 || minimum&(minimum-1) != 0 || minimum > 64<<10 {
		minimum = 1
	}
	if preferred < max(minimum, 512) || preferred&(preferred-1) != 0 {
		preferred = max(minimum, 4096)
	}
	preferred = min(preferred, maxPayload)
	if maximum == 0 || maximum > maxPayload {
		maximum = maxPayload
	}
	maximum -= maximum % minimum
	if maximum < preferred {
		maximum = min(preferred, maxPayload)
	}
	return minimum, preferred, maximum
}
