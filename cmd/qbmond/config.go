package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/qbmond/qbmond/keyval"
)

// config is the parsed command line. Order matters for the repeatable
// options that act on the graph (--blockdev), so they keep theirs.
type config struct {
	qmp       []string // listener addresses: unix:PATH or tcp:HOST:PORT
	jsonrpc   []string
	blockdevs []string // JSON or keyval, applied in order
	// graphOpts are --blockdev, --nbd-server and --export in command-line
	// order, which is the order QSD applies them in.
	graphOpts []graphOpt
	logLevel  string
	logFormat string
	pidfile   string
	version   bool
}

// graphOpt is one option that acts on the daemon's state at start.
type graphOpt struct {
	name  string // blockdev, nbd-server, export
	value string // JSON or keyval
}

// listFlag collects every occurrence of a repeatable option.
type listFlag struct{ vals *[]string }

func (l listFlag) String() string {
	if l.vals == nil {
		return ""
	}
	return strings.Join(*l.vals, " ")
}
func (l listFlag) Set(s string) error { *l.vals = append(*l.vals, s); return nil }

// chardevs and monitors collect QSD's spelling of a QMP socket:
//
//	--chardev socket,path=P,server=on,wait=off,id=X --monitor chardev=X
//
// Each monitor names a chardev; the pair becomes one QMP listener.
type qsdSockets struct {
	chardevs map[string]string // id → listener address
	order    []string
	monitors []monitorArg
}

type monitorArg struct{ arg, chardev string }

func (q *qsdSockets) addChardev(s string) error {
	kv, err := keyval.Parse(s, "backend")
	if err != nil {
		return err
	}
	str := func(k string) string { v, _ := kv[k].(string); return v }
	id := str("id")
	if id == "" {
		return errors.New("chardev: \"id\" is missing")
	}
	if _, dup := q.chardevs[id]; dup {
		return fmt.Errorf("attempt to add duplicate property '%s' to object (type 'container')", id)
	}
	if b := str("backend"); b != "socket" {
		return fmt.Errorf("chardev '%s': only 'socket' chardevs are supported, not '%s'", id, b)
	}
	if v := str("server"); v != "" && v != "on" && v != "yes" && v != "true" {
		return fmt.Errorf("chardev '%s': qbmond only listens (server=on)", id)
	}
	var addr string
	switch {
	case str("path") != "":
		addr = "unix:" + str("path")
	case str("port") != "":
		host := str("host")
		addr = "tcp:" + host + ":" + str("port")
	default:
		return fmt.Errorf("chardev '%s': socket needs path= or host=,port=", id)
	}
	if q.chardevs == nil {
		q.chardevs = map[string]string{}
	}
	q.chardevs[id] = addr
	q.order = append(q.order, id)
	return nil
}

func (q *qsdSockets) addMonitor(s string) error {
	kv, err := keyval.Parse(s, "chardev")
	if err != nil {
		return err
	}
	id, _ := kv["chardev"].(string)
	if id == "" {
		return errors.New("Parameter 'chardev' is missing")
	}
	if m, _ := kv["mode"].(string); m != "" && m != "control" {
		return fmt.Errorf("only mode=control is supported")
	}
	if p, _ := kv["pretty"].(string); p != "" && p != "off" {
		return fmt.Errorf("pretty=on is not supported")
	}
	q.monitors = append(q.monitors, monitorArg{s, id})
	return nil
}

func (q *qsdSockets) listeners() ([]string, error) {
	var out []string
	for _, m := range q.monitors {
		addr, ok := q.chardevs[m.chardev]
		if !ok {
			return nil, fmt.Errorf("--monitor %s: chardev \"%s\" not found", m.arg, m.chardev)
		}
		out = append(out, addr)
	}
	return out, nil
}

// parseArgs reads the command line. Both --opt=value and --opt value work,
// as do single-dash spellings (Go's flag package).
func parseArgs(args []string, stderr io.Writer) (*config, error) {
	c := &config{}
	var q qsdSockets
	fs := flag.NewFlagSet("qbmond", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(listFlag{&c.qmp}, "qmp", "QMP listener `unix:PATH|tcp:HOST:PORT` (repeatable; a unix socket is mode 0600; tcp has NO authentication: anyone who can connect controls the daemon)")
	fs.Var(listFlag{&c.jsonrpc}, "jsonrpc", "JSON-RPC 2.0 listener `unix:PATH|tcp:HOST:PORT` (repeatable; as --qmp, tcp has NO authentication)")
	fs.Func("blockdev", "add a block node at start: `JSON or keyval` as blockdev-add takes (repeatable)", func(v string) error {
		c.blockdevs = append(c.blockdevs, v)
		c.graphOpts = append(c.graphOpts, graphOpt{"blockdev", v})
		return nil
	})
	fs.Func("nbd-server", "QSD compatibility: start the NBD server, `addr.type=unix,addr.path=P` or addr.type=inet,addr.host=H,addr.port=N[,max-connections=N]", func(v string) error {
		c.graphOpts = append(c.graphOpts, graphOpt{"nbd-server", v})
		return nil
	})
	fs.Func("export", "QSD compatibility: add an export, `[type=]nbd,id=ID,node-name=N[,writable=on,...]` as block-export-add takes (repeatable)", func(v string) error {
		c.graphOpts = append(c.graphOpts, graphOpt{"export", v})
		return nil
	})
	fs.Func("chardev", "QSD compatibility: `socket,path=P,server=on,wait=off,id=X`", q.addChardev)
	fs.Func("monitor", "QSD compatibility: `chardev=X` makes chardev X a QMP listener", q.addMonitor)
	fs.StringVar(&c.logLevel, "log-level", "info", "log level: `trace|debug|info|warn|error`")
	fs.StringVar(&c.logFormat, "log-format", "console", "log format: `console|json`")
	fs.StringVar(&c.pidfile, "pidfile", "", "write the process id to `FILE`")
	fs.BoolVar(&c.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: qbmond [options]\n\nqbmond serves QMP (as qemu-storage-daemon 7.2 does) and JSON-RPC 2.0 for a graph of block nodes.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument '%s'", fs.Arg(0))
	}
	mons, err := q.listeners()
	if err != nil {
		return nil, err
	}
	c.qmp = append(c.qmp, mons...)
	if len(c.qmp) == 0 && len(c.jsonrpc) == 0 {
		c.qmp = []string{"unix:" + defaultSocket()}
	}
	return c, nil
}

// defaultSocket is $XDG_RUNTIME_DIR/qbmond/qmp.sock, else
// /tmp/qbmond-$UID/qmp.sock.
func defaultSocket() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "qbmond", "qmp.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("qbmond-%d", os.Getuid()), "qmp.sock")
}
