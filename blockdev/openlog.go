package blockdev

import (
	"strings"

	"github.com/rs/zerolog"
)

// Log returns the graph's logger, for a driver that logs what happens to
// its node after Open (the nbd client's reconnections).
func (oc *OpenContext) Log() zerolog.Logger { return oc.g.log }

// nestedOption looks up a driver option by its dotted path ("server.port":
// member port of object option server), for StrongOptions.
func nestedOption(o Options, path string) (any, bool) {
	if v, ok := o[path]; ok {
		return v, true
	}
	first, rest, ok := strings.Cut(path, ".")
	if !ok {
		return nil, false
	}
	sub, err := o.Object(first)
	if err != nil || sub == nil {
		return nil, false
	}
	return nestedOption(sub, rest)
}
