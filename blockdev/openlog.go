package blockdev

import "github.com/rs/zerolog"

// Log returns the graph's logger, for a driver that logs what happens to
// its node after Open (the nbd client's reconnections).
func (oc *OpenContext) Log() zerolog.Logger { return oc.g.log }
