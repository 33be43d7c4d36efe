package nbd

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

var be = binary.BigEndian

// errAbort ends a session the client closed with NBD_OPT_ABORT.
var errAbort = errors.New("nbd: client aborted the handshake")

// handshake runs the newstyle negotiation. On success the connection is
// attached to an export and ready for transmission. A client that does not
// set NBD_FLAG_C_FIXED_NEWSTYLE may only send NBD_OPT_EXPORT_NAME, as in
// QEMU; anything else ends the connection.
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
		return fmt.Errorf("nbd: unknown client flags %#x", flags&^(flagCFixedNewstyle|flagCNoZeroes))
	}
	fixed := flags&flagCFixedNewstyle != 0
	c.noZeroes = flags&flagCNoZeroes != 0

	var hdr [16]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			return err
		}
		if m := be.Uint64(hdr[0:]); m != optMagic {
			return fmt.Errorf("nbd: bad option magic %#x", m)
		}
		c.opt = be.Uint32(hdr[8:])
		c.optLeft = be.Uint32(hdr[12:])
		if c.optLeft > maxPayload {
			return fmt.Errorf("nbd: option %d with %d bytes of data is too long", c.opt, c.optLeft)
		}
		if !fixed && c.opt != optExportName {
			return fmt.Errorf("nbd: option %d (%s) from a client without fixed newstyle", c.opt, optName(c.opt))
		}
		done, err := c.option()
		if err != nil || done {
			return err
		}
		if c.optLeft != 0 {
			// Every handler consumes its data; this is a safety net.
			if err := c.optDrop(); err != nil {
				return err
			}
		}
	}
}

// optName is the name QEMU's messages give an option.
func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "export name"
	case optAbort:
		return "abort"
	case optList:
		return "list"
	case optStartTLS:
		return "starttls"
	case optInfo:
		return "info"
	case optGo:
		return "go"
	case optStructuredReply:
		return "structured reply"
	case optListMetaContext:
		return "list meta context"
	case optSetMetaContext:
		return "set meta context"
	}
	return "<unknown>"
}

// The option's data is read as it is parsed, like QEMU does, so that an
// option of any length up to the 32 MiB limit is answered without holding
// it in memory. optLeft counts the bytes of c.opt still unread.

// optDrop discards the rest of the current option's data.
func (c *conn) optDrop() error {
	n := c.optLeft
	c.optLeft = 0
	_, err := io.CopyN(io.Discard, c.br, int64(n))
	return err
}

// optFail discards the rest of the option and sends an error reply.
func (c *conn) optFail(typ uint32, format string, args ...any) error {
	if err := c.optDrop(); err != nil {
		return err
	}
	return c.optError(c.opt, typ, fmt.Sprintf(format, args...))
}

// optRead reads n bytes of the option's data. When the option has fewer
// left, or (checkNUL) the bytes hold a NUL, the option is answered with an
// error and ok is false.
func (c *conn) optRead(n uint32, checkNUL bool) (p []byte, ok bool, err error) {
	if n > c.optLeft {
		return nil, false, c.optFail(repErrInvalid, "Inconsistent lengths in option %s", optName(c.opt))
	}
	c.optLeft -= n
	p = make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		return nil, false, err
	}
	if checkNUL && bytes.IndexByte(p, 0) >= 0 {
		return nil, false, c.optFail(repErrInvalid, "Unexpected embedded NUL in option %s", optName(c.opt))
	}
	return p, true, nil
}

// optReadName reads a 32-bit length and a string of that length.
func (c *conn) optReadName() (string, bool, error) {
	p, ok, err := c.optRead(4, false)
	if !ok {
		return "", ok, err
	}
	n := be.Uint32(p)
	if n > maxStringLen {
		return "", false, c.optFail(repErrInvalid, "Invalid name length: %d", n)
	}
	p, ok, err = c.optRead(n, true)
	return string(p), ok, err
}

// optUnexpectedLength refuses data on an option that takes none.
func (c *conn) optUnexpectedLength() error {
	return c.optFail(repErrInvalid, "option '%s' has unexpected length", optName(c.opt))
}

// sanitizeName shortens a client's export name for an error message.
func sanitizeName(name string) string {
	if len(name) < 80 {
		return name
	}
	return name[:80] + "..."
}

// option handles the current option; done means transmission starts.
func (c *conn) option() (done bool, err error) {
	opt := c.opt
	if c.srv.isClosed() && opt != optAbort {
		return false, c.optFail(repErrShutdown, "server is shutting down")
	}
	switch opt {
	case optExportName:
		return c.optExportName()
	case optAbort:
		// Ignore any data, as the document asks; the client may be gone already.
		_ = c.optReply(opt, repAck, nil)
		return false, errAbort
	case optList:
		if c.optLeft != 0 {
			return false, c.optUnexpectedLength()
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
		if c.optLeft != 0 {
			return false, c.optUnexpectedLength()
		}
		return false, c.optError(opt, repErrPolicy, "TLS not configured")
	case optInfo, optGo:
		return c.optInfo(opt)
	case optStructuredReply:
		if c.optLeft != 0 {
			return false, c.optUnexpectedLength()
		}
		if c.structured {
			return false, c.optError(opt, repErrInvalid, "structured reply already negotiated")
		}
		c.structured = true
		return false, c.optReply(opt, repAck, nil)
	case optListMetaContext, optSetMetaContext:
		return false, c.optMetaContext(opt)
	default:
		return false, c.optFail(repErrUnsup, "Unsupported option %d (%s)", opt, optName(opt))
	}
}

func (c *conn) optExportName() (bool, error) {
	if c.optLeft > maxStringLen {
		return false, errors.New("nbd: export name too long")
	}
	p := make([]byte, c.optLeft)
	c.optLeft = 0
	if _, err := io.ReadFull(c.br, p); err != nil {
		return false, err
	}
	name := string(p)
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

// optInfo answers NBD_OPT_INFO and NBD_OPT_GO: the name when asked, the
// description when the export has one (even an empty one), the block sizes and the size and flags,
// in that order, as QEMU sends them.
func (c *conn) optInfo(opt uint32) (bool, error) {
	name, ok, err := c.optReadName()
	if !ok {
		return false, err
	}
	p, ok, err := c.optRead(2, false)
	if !ok {
		return false, err
	}
	var wantName, wantBlockSize bool
	for n := be.Uint16(p); n > 0; n-- {
		p, ok, err := c.optRead(2, false)
		if !ok {
			return false, err
		}
		switch be.Uint16(p) {
		case infoName:
			wantName = true
		case infoBlockSize:
			wantBlockSize = true
		}
	}
	if c.optLeft != 0 {
		return false, c.optUnexpectedLength()
	}
	ex := c.srv.lookup(name)
	if ex == nil {
		return false, c.optError(opt, repErrUnknown, fmt.Sprintf("export '%s' not present", sanitizeName(name)))
	}
	if wantName {
		if err := c.optReply(opt, repInfo, infoString(infoName, name)); err != nil {
			return false, err
		}
	}
	if ex.Description != "" || ex.DescriptionSet {
		if err := c.optReply(opt, repInfo, infoString(infoDescription, ex.Description)); err != nil {
			return false, err
		}
	}
	minB, prefB, maxB := blockSizes(ex.Backend)
	align := minB
	if opt == optGo && !wantBlockSize {
		// A client that did not ask may ignore the minimum: it is
		// advertised as 1, and the server copes with any alignment.
		minB = 1
	}
	p = make([]byte, 14)
	be.PutUint16(p, infoBlockSize)
	be.PutUint32(p[2:], minB)
	be.PutUint32(p[6:], prefB)
	be.PutUint32(p[10:], maxB)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return false, err
	}
	size, flags := c.exportInfo(ex)
	p = make([]byte, 12)
	be.PutUint16(p, infoExport)
	be.PutUint64(p[2:], uint64(size))
	be.PutUint16(p[10:], flags)
	if err := c.optReply(opt, repInfo, p); err != nil {
		return false, err
	}
	if opt == optInfo && !wantBlockSize && align > 1 {
		return false, c.optError(opt, repErrBlockSizeReqd, "request NBD_INFO_BLOCK_SIZE to use this export")
	}
	if opt == optGo {
		if ex = c.srv.attach(c, name); ex == nil {
			return false, c.optError(opt, repErrUnknown, fmt.Sprintf("export '%s' not present", sanitizeName(name)))
		}
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

// optMetaContext handles NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The contexts are answered in QEMU's order
// (base:allocation, qemu:allocation-depth, then the bitmaps in the export's
// order) whatever the order of the queries; queries that match nothing and
// queries longer than a string may be are ignored.
func (c *conn) optMetaContext(opt uint32) error {
	set := opt == optSetMetaContext
	if set {
		if !c.structured {
			return c.optFail(repErrInvalid, "request option '%s' when structured reply is not negotiated", optName(opt))
		}
		// A SET replaces the selection even when it fails.
		c.meta, c.metaExport = nil, ""
	}
	name, ok, err := c.optReadName()
	if !ok {
		return err
	}
	ex := c.srv.lookup(name)
	if ex == nil {
		return c.optFail(repErrUnknown, "export '%s' not present", sanitizeName(name))
	}
	p, ok, err := c.optRead(4, false)
	if !ok {
		return err
	}
	nq := be.Uint32(p)
	want := map[uint32]bool{}
	if nq == 0 && !set {
		for _, id := range exportContexts(ex) {
			want[id] = true
		}
	}
	for ; nq > 0; nq-- {
		p, ok, err := c.optRead(4, false)
		if !ok {
			return err
		}
		n := be.Uint32(p)
		if n > maxStringLen {
			if n > c.optLeft {
				return c.optFail(repErrInvalid, "Inconsistent lengths in option %s", optName(opt))
			}
			c.optLeft -= n
			if _, err := io.CopyN(io.Discard, c.br, int64(n)); err != nil {
				return err
			}
			continue
		}
		q, ok, err := c.optRead(n, true)
		if !ok {
			return err
		}
		for _, id := range matchQuery(ex, string(q), set) {
			want[id] = true
		}
	}
	if c.optLeft != 0 {
		return c.optUnexpectedLength()
	}
	var ids []uint32
	for _, id := range exportContexts(ex) {
		if !want[id] {
			continue
		}
		ids = append(ids, id)
		cname := contextName(ex, id)
		p := make([]byte, 4, 4+len(cname))
		if set {
			be.PutUint32(p, id)
		}
		p = append(p, cname...)
		if err := c.optReply(opt, repMetaContext, p); err != nil {
			return err
		}
	}
	if err := c.optReply(opt, repAck, nil); err != nil {
		return err
	}
	if set {
		c.meta, c.metaExport = ids, name
	}
	return nil
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

// exportContexts lists the IDs of the contexts ex offers, in reply order.
func exportContexts(ex *export) []uint32 {
	ids := []uint32{idBaseAllocation}
	if ex.AllocationDepth {
		ids = append(ids, idAllocDepth)
	}
	for i := range ex.Bitmaps {
		ids = append(ids, idBitmapBase+uint32(i))
	}
	return ids
}

// matchQuery returns the contexts of ex one query selects. A list also
// accepts a bare namespace ("base:", "qemu:") or "qemu:dirty-bitmap:" for
// all of its contexts.
func matchQuery(ex *export, q string, set bool) []uint32 {
	var out []uint32
	bitmaps := func() {
		for i := range ex.Bitmaps {
			out = append(out, idBitmapBase+uint32(i))
		}
	}
	switch {
	case q == ctxBaseAllocation || q == "base:" && !set:
		out = append(out, idBaseAllocation)
	case q == ctxAllocDepth || q == "qemu:" && !set:
		if ex.AllocationDepth {
			out = append(out, idAllocDepth)
		}
		if q == "qemu:" {
			bitmaps()
		}
	case q == ctxBitmapPrefix:
		if !set {
			bitmaps()
		}
	case strings.HasPrefix(q, ctxBitmapPrefix):
		for i, b := range ex.Bitmaps {
			if ctxBitmapPrefix+b == q {
				out = append(out, idBitmapBase+uint32(i))
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
	if b.CanMultiConn() && c.srv.MaxConnections != 1 {
		// A server that takes one client at a time does not invite
		// several (QEMU's rule).
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
	if c.metaExport != name {
		c.meta = nil
	}
}

// blockSizes returns the backend's block sizes made valid for the protocol,
// with the maximum capped to the 32 MiB payload limit and a multiple of the
// minimum.
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
	if maximum < minimum {
		maximum = minimum
	}
	// A maximum below the preferred size is sent as it is, as QEMU
	// does (a node whose transfer limit is below 4 KiB).
	return minimum, preferred, maximum
}
