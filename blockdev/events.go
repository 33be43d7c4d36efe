package blockdev

// ImageCorrupted is BLOCK_IMAGE_CORRUPTED's data.
type ImageCorrupted struct {
	// Device is the block backend's name; "" for nodes used through
	// node-names only (always, in a storage daemon).
	Device   string `json:"device"`
	NodeName string `json:"node-name,omitempty"`
	Msg      string `json:"msg"`
	Offset   *int64 `json:"offset,omitempty"`
	Size     *int64 `json:"size,omitempty"`
	Fatal    bool   `json:"fatal"`
}

// ReportCorruption emits BLOCK_IMAGE_CORRUPTED for the node: a format
// driver found its metadata inconsistent. offset and size locate the
// damaged area in the image file (negative when unknown); fatal says the
// node was marked corrupt and refuses further writes. Safe to call from
// request paths.
func (n *Node) ReportCorruption(msg string, offset, size int64, fatal bool) {
	n.g.log.Error().Str("node", n.name).Str("msg", msg).Int64("offset", offset).Int64("size", size).
		Bool("fatal", fatal).Msg("image corruption")
	emit := n.g.emit.Load()
	if emit == nil {
		return
	}
	ev := ImageCorrupted{NodeName: n.name, Msg: msg, Fatal: fatal}
	if offset >= 0 {
		ev.Offset = &offset
	}
	if size >= 0 {
		ev.Size = &size
	}
	(*emit)("BLOCK_IMAGE_CORRUPTED", ev)
}

// Warn logs a problem a driver survived, such as clusters it had to leak:
// QEMU prints these on stderr and carries on.
func (n *Node) Warn(msg string, err error) {
	n.g.log.Warn().Str("node", n.name).Err(err).Msg(msg)
}

// SetEmitter sets how the graph sends QMP events (BLOCK_IMAGE_CORRUPTED):
// the monitor's dispatcher's Emit. Until it is set events are dropped.
func (g *Graph) SetEmitter(emit func(name string, data any)) {
	g.emit.Store(&emit)
}
