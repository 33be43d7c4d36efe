// Command qbmond is a block-node daemon that speaks QMP like
// qemu-storage-daemon 7.2, plus JSON-RPC 2.0 over the same commands.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/qbmond/qbmond/blockdev"
	"github.com/qbmond/qbmond/blockdev/blockqmp"
	_ "github.com/qbmond/qbmond/drivers/all"
	"github.com/qbmond/qbmond/exports"
	"github.com/qbmond/qbmond/jobs"
	"github.com/qbmond/qbmond/keyval"
	"github.com/qbmond/qbmond/qmp"
	"github.com/qbmond/qbmond/schema"
)

// version is qbmond's own version; the QMP greeting reports QEMU 7.2.0 as
// the dialect spoken and "qbmond <version>" as the package.
const version = "0.1.0"

// profiled, set in builds with the cpuprofile tag (profile.go), runs the
// daemon under a CPU profile when QBMOND_CPUPROFILE names a file.
var profiled func(run func() int) int

func main() {
	start := func() int { return run(os.Args[1:], os.Stdout, os.Stderr) }
	if profiled != nil {
		os.Exit(profiled(start))
	}
	os.Exit(start())
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseArgs(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "qbmond: %v\n", err)
		return 1
	}
	if cfg.version {
		fmt.Fprintf(stdout, "qbmond %s (QMP dialect of QEMU 7.2)\n", version)
		return 0
	}
	// Catch the signals before anything is created, so that a SIGTERM
	// arriving during start-up still removes what was created.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sig)
	log, err := newLogger(cfg, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "qbmond: %v\n", err)
		return 1
	}
	d, err := newDaemon(cfg, log)
	if err != nil {
		fmt.Fprintf(stderr, "qbmond: %v\n", err)
		return 1
	}
	for _, a := range d.addrs {
		fmt.Fprintf(stdout, "qbmond: %s\n", a)
	}
	d.wait(sig)
	if err := d.shutdown(); err != nil {
		log.Error().Err(err).Msg("shutdown")
		return 1
	}
	return 0
}

func newLogger(cfg *config, stderr io.Writer) (zerolog.Logger, error) {
	lvl, err := zerolog.ParseLevel(cfg.logLevel)
	if err != nil || cfg.logLevel == "" {
		return zerolog.Nop(), fmt.Errorf("invalid --log-level '%s'", cfg.logLevel)
	}
	var w io.Writer
	switch cfg.logFormat {
	case "json":
		w = stderr
	case "console":
		w = zerolog.ConsoleWriter{Out: stderr, TimeFormat: time.RFC3339}
	default:
		return zerolog.Nop(), fmt.Errorf("invalid --log-format '%s' (console or json)", cfg.logFormat)
	}
	return zerolog.New(w).Level(lvl).With().Timestamp().Logger(), nil
}

// daemon is one running qbmond: the dispatcher, the graph and the
// transports serving them.
type daemon struct {
	log      zerolog.Logger
	disp     *qmp.Dispatcher
	graph    *blockdev.Graph
	exports  *exports.Manager
	jobs     *jobs.Manager
	qmpSrv   *qmp.Server
	rpcSrv   *qmp.JSONRPCServer
	addrs    []string
	pidfile  *pidFile
	quit     chan struct{}
	quitOnce sync.Once
	stopOnce sync.Once
	serving  sync.WaitGroup
}

func newDaemon(cfg *config, log zerolog.Logger) (*daemon, error) {
	s, err := schema.Load()
	if err != nil {
		return nil, fmt.Errorf("schema: %w", err)
	}
	d := &daemon{log: log, quit: make(chan struct{})}
	d.disp = qmp.NewDispatcher(s, log)
	vi := qmp.VersionInfo{Major: 7, Minor: 2, Micro: 0, Package: "qbmond " + version}
	qmp.RegisterCoreStop(d.disp, vi, d.stopWork, d.requestQuit)
	schema.RegisterCommands(d.disp, s)
	d.graph = blockdev.NewGraph(log)
	blockqmp.RegisterCommands(d.disp, d.graph)
	d.exports = exports.New(d.graph, d.disp, log)
	d.exports.RegisterCommands()
	d.jobs = jobs.New(d.disp, log)
	d.jobs.RegisterCommands(d.disp, d.graph)

	ok := false
	defer func() {
		if !ok {
			d.shutdown()
		}
	}()
	for _, o := range cfg.graphOpts {
		var err error
		switch o.name {
		case "blockdev":
			err = d.commandLine("blockdev-add", "driver", o.value)
		case "nbd-server":
			err = d.nbdServerOption(o.value)
		case "export":
			err = d.commandLine("block-export-add", "type", o.value)
		}
		if err != nil {
			// As QSD, --blockdev errors carry QEMU's hint line.
			var qe *qmp.Error
			if o.name == "blockdev" && errors.As(err, &qe) && qe.Hint != "" {
				return nil, fmt.Errorf("--%s %s: %w\n%s", o.name, o.value, err, qe.Hint)
			}
			return nil, fmt.Errorf("--%s %s: %w", o.name, o.value, err)
		}
	}
	d.qmpSrv = qmp.NewServer(d.disp, vi, log)
	d.rpcSrv = qmp.NewJSONRPCServer(d.disp, log)
	// Open every listener before serving any, QMP sockets last: once a
	// client sees the QMP socket, the whole daemon is up.
	type pending struct {
		l     net.Listener
		addr  string
		what  string
		serve func(net.Listener) error
	}
	var ls []pending
	defer func() {
		if !ok {
			for _, p := range ls {
				p.l.Close()
			}
		}
	}()
	for _, group := range []struct {
		addrs []string
		what  string
		serve func(net.Listener) error
	}{{cfg.jsonrpc, "JSON-RPC", d.rpcSrv.Serve}, {cfg.qmp, "QMP", d.qmpSrv.Serve}} {
		for _, a := range group.addrs {
			l, err := qmp.Listen(a)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", group.what, a, err)
			}
			ls = append(ls, pending{l, a, group.what, group.serve})
		}
	}
	// As QSD, the pid file is written once everything is created and
	// before any connection is accepted, so that its presence means the
	// daemon is ready; a second daemon given the same file stops here.
	if cfg.pidfile != "" {
		pf, err := writePIDFile(cfg.pidfile)
		if err != nil {
			return nil, fmt.Errorf("cannot create PID file: %w", err)
		}
		d.pidfile = pf
	}
	for _, p := range ls {
		d.serve(p.l, p.addr, p.what, p.serve)
	}
	ok = true
	return d, nil
}

// commandLine runs a command given on the command line, as JSON when it
// starts with '{' and as keyval otherwise (QSD's rule); implied is the key a
// first keyval element without '=' stands for.
func (d *daemon) commandLine(cmd, implied, arg string) error {
	tree, kv, err := parseOption(arg, implied)
	if err != nil {
		return err
	}
	return d.execute(cmd, tree, kv)
}

// parseOption reads an option's value, JSON or keyval, and tells which.
func parseOption(arg, implied string) (tree any, kv bool, err error) {
	if strings.HasPrefix(strings.TrimSpace(arg), "{") {
		tree, err = qmp.ParseJSON([]byte(arg))
		return tree, false, err
	}
	tree, err = keyval.Parse(arg, implied)
	return tree, true, err
}

// execute runs a command from the command line.
func (d *daemon) execute(cmd string, args any, kv bool) error {
	if _, qerr := d.disp.Execute(context.Background(), qmp.Request{Name: cmd, Args: args, Keyval: kv, Origin: "cli"}); qerr != nil {
		return qerr
	}
	return nil
}

// nbdServerOption is --nbd-server: QSD's NbdServerOptions, whose addr is
// a flat SocketAddress (addr.type=unix,addr.path=P), run as nbd-server-start,
// whose addr is the legacy form ({"type": "unix", "data": {"path": P}}).
func (d *daemon) nbdServerOption(arg string) error {
	tree, kv, err := parseOption(arg, "")
	if err != nil {
		return err
	}
	opts, ok := tree.(map[string]any)
	if !ok {
		return errors.New("Invalid parameter type, expected: object")
	}
	addr, ok := opts["addr"].(map[string]any)
	if !ok {
		return errors.New("Parameter 'addr' is missing")
	}
	typ, _ := addr["type"].(string)
	data := map[string]any{}
	for k, v := range addr {
		if k != "type" {
			data[k] = v
		}
	}
	switch typ {
	case "unix":
		if _, ok := data["path"]; !ok {
			return errors.New("Parameter 'addr.path' is missing")
		}
	case "inet":
		for _, k := range []string{"host", "port"} {
			if _, ok := data[k]; !ok {
				return fmt.Errorf("Parameter 'addr.%s' is missing", k)
			}
		}
	case "":
		return errors.New("Parameter 'addr.type' is missing")
	}
	args := map[string]any{}
	for k, v := range opts {
		args[k] = v
	}
	args["addr"] = map[string]any{"type": typ, "data": data}
	return d.execute("nbd-server-start", args, kv)
}

func (d *daemon) serve(l net.Listener, addr, what string, serve func(net.Listener) error) {
	d.addrs = append(d.addrs, what+" on "+addr)
	d.log.Info().Str("addr", addr).Msg(what + " listening")
	if strings.HasPrefix(addr, "tcp:") {
		d.log.Warn().Str("addr", addr).
			Msg(what + " on tcp has no authentication and no encryption: whoever can connect controls the daemon and every image it can open")
	}
	d.serving.Add(1)
	go func() {
		defer d.serving.Done()
		if err := serve(l); err != nil {
			d.log.Error().Err(err).Str("addr", addr).Msg(what + " listener failed")
		}
	}()
}

func (d *daemon) requestQuit() { d.quitOnce.Do(func() { close(d.quit) }) }

// wait blocks until quit or a signal.
func (d *daemon) wait(sig <-chan os.Signal) {
	select {
	case s := <-sig:
		d.log.Info().Str("signal", s.String()).Msg("terminating")
	case <-d.quit:
		d.log.Info().Msg("quit")
	}
}

// stopWork is the start of QSD's exit, run while the monitors still
// deliver events (quit runs it before its reply): every export is closed
// (BLOCK_EXPORT_DELETED), then every job is cancelled, newest first, each
// to its end (aborting, BLOCK_JOB_CANCELLED, concluded, null). It runs
// once.
func (d *daemon) stopWork() {
	d.stopOnce.Do(func() {
		if d.exports != nil {
			d.exports.Close()
		}
		if d.jobs != nil {
			d.jobs.CancelAll()
		}
	})
}

// shutdown ends the exports and jobs (stopWork), stops the transports
// (removing socket files; what is queued for a client is written first),
// then flushes and closes every node.
func (d *daemon) shutdown() error {
	var errs []error
	d.stopWork()
	if d.qmpSrv != nil {
		errs = append(errs, d.qmpSrv.Close())
	}
	if d.rpcSrv != nil {
		errs = append(errs, d.rpcSrv.Close())
	}
	d.serving.Wait()
	if d.graph != nil {
		d.graph.Close()
	}
	if d.pidfile != nil {
		d.pidfile.remove()
	}
	return errors.Join(errs...)
}
