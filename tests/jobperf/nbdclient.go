package main

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
)

// nbdClient is the least NBD client that times writes: fixed newstyle
// handshake, NBD_OPT_GO, no structured replies, one request in flight.
type nbdClient struct {
	c    net.Conn
	size uint64
	buf  []byte
	hdr  [16]byte
	seq  uint64
}

var be = binary.BigEndian

const (
	nbdMagic         = 0x4e42444d41474943 // "NBDMAGIC"
	nbdOptMagic      = 0x49484156454F5054 // "IHAVEOPT"
	nbdRepMagic      = 0x3e889045565a9
	nbdRequestMagic  = 0x25609513
	nbdSimpleMagic   = 0x67446698
	nbdOptGo         = 7
	nbdRepAck        = 1
	nbdRepInfo       = 3
	nbdRepErr        = 1 << 31
	nbdInfoExport    = 0
	nbdCmdWrite      = 1
	nbdCmdDisconnect = 2
)

func nbdDial(sock, export string) (*nbdClient, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return nil, err
	}
	cl := &nbdClient{c: c}
	if err := cl.handshake(export); err != nil {
		c.Close()
		return nil, fmt.Errorf("nbd handshake: %w", err)
	}
	return cl, nil
}

func (cl *nbdClient) handshake(export string) error {
	var g [18]byte
	if _, err := io.ReadFull(cl.c, g[:]); err != nil {
		return err
	}
	if be.Uint64(g[:]) != nbdMagic || be.Uint64(g[8:]) != nbdOptMagic {
		return fmt.Errorf("bad greeting % x", g)
	}
	// Fixed newstyle, no zeroes.
	p := be.AppendUint32(nil, 1|2)
	data := be.AppendUint32(nil, uint32(len(export)))
	data = append(data, export...)
	data = be.AppendUint16(data, 0)
	p = be.AppendUint64(p, nbdOptMagic)
	p = be.AppendUint32(p, nbdOptGo)
	p = be.AppendUint32(p, uint32(len(data)))
	p = append(p, data...)
	if _, err := cl.c.Write(p); err != nil {
		return err
	}
	for {
		var h [20]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			return err
		}
		if be.Uint64(h[:]) != nbdRepMagic {
			return fmt.Errorf("bad option reply % x", h)
		}
		typ, n := be.Uint32(h[12:]), be.Uint32(h[16:])
		d := make([]byte, n)
		if _, err := io.ReadFull(cl.c, d); err != nil {
			return err
		}
		switch {
		case typ&nbdRepErr != 0:
			return fmt.Errorf("NBD_OPT_GO: error %#x: %s", typ, d)
		case typ == nbdRepInfo && len(d) >= 12 && be.Uint16(d) == nbdInfoExport:
			cl.size = be.Uint64(d[2:])
		case typ == nbdRepAck:
			return nil
		}
	}
}

// write writes p at off and waits for the reply.
func (cl *nbdClient) write(off uint64, p []byte) error {
	cl.seq++
	b := be.AppendUint32(cl.buf[:0], nbdRequestMagic)
	b = be.AppendUint16(b, 0)
	b = be.AppendUint16(b, nbdCmdWrite)
	b = be.AppendUint64(b, cl.seq)
	b = be.AppendUint64(b, off)
	b = be.AppendUint32(b, uint32(len(p)))
	b = append(b, p...)
	cl.buf = b
	if _, err := cl.c.Write(b); err != nil {
		return err
	}
	if _, err := io.ReadFull(cl.c, cl.hdr[:]); err != nil {
		return err
	}
	if be.Uint32(cl.hdr[:]) != nbdSimpleMagic || be.Uint64(cl.hdr[8:]) != cl.seq {
		return fmt.Errorf("bad reply % x", cl.hdr)
	}
	if e := be.Uint32(cl.hdr[4:]); e != 0 {
		return fmt.Errorf("write at %d: NBD error %d", off, e)
	}
	return nil
}

func (cl *nbdClient) close() {
	var b []byte
	b = be.AppendUint32(b, nbdRequestMagic)
	b = be.AppendUint16(b, 0)
	b = be.AppendUint16(b, nbdCmdDisconnect)
	b = append(b, make([]byte, 20)...)
	cl.c.Write(b)
	cl.c.Close()
}
