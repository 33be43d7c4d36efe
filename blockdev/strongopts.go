package blockdev

import "strings"

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
