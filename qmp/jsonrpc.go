package qmp

import (
	"context"
	"net"

	"github.com/rs/zerolog"
	"github.com/sourcegraph/jsonrpc2"
)

// JSON-RPC error codes. Every QMP error is an application error; the QMP
// class and description travel in the error's data.
const (
	codeCommandNotFound = jsonrpc2.CodeMethodNotFound
	codeQMPError        = -32000
)

// JSONRPCServer serves the dispatcher's commands as JSON-RPC 2.0 (one JSON
// object per message, no headers): method = command, params = arguments,
// result = return value; events are "event" notifications.
type JSONRPCServer struct {
	d   *Dispatcher
	log zerolog.Logger
	acc acceptor
}

// NewJSONRPCServer returns a JSON-RPC server for d.
func NewJSONRPCServer(d *Dispatcher, log zerolog.Logger) *JSONRPCServer {
	return &JSONRPCServer{d: d, log: log}
}

// Serve accepts connections on l until it fails or the server is closed.
func (s *JSONRPCServer) Serve(l net.Listener) error {
	return s.acc.serve(l, s.handleConn)
}

// Close stops every listener and connection.
func (s *JSONRPCServer) Close() error {
	return s.acc.close()
}

type rpcEvent struct {
	Event     string `json:"event"`
	Data      any    `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// rpcHandler runs each request through the dispatcher and replies; work a
// command asked to run after its reply (quit) runs once the reply is sent.
type rpcHandler struct{ s *JSONRPCServer }

func (h rpcHandler) Handle(ctx context.Context, conn *jsonrpc2.Conn, r *jsonrpc2.Request) {
	res, rerr, after := h.s.call(ctx, r)
	if !r.Notif {
		if rerr != nil {
			conn.ReplyWithError(ctx, r.ID, rerr)
		} else {
			conn.Reply(ctx, r.ID, res)
		}
	}
	for _, f := range after {
		f()
	}
}

func (s *JSONRPCServer) call(ctx context.Context, r *jsonrpc2.Request) (any, *jsonrpc2.Error, []func()) {
	var args any
	if r.Params != nil {
		v, err := ParseJSON(*r.Params)
		if err != nil {
			return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeParseError, Message: err.Error()}, nil
		}
		if _, ok := v.(map[string]any); !ok && v != nil {
			return nil, &jsonrpc2.Error{Code: jsonrpc2.CodeInvalidParams, Message: "params must be an object"}, nil
		}
		args = v
	}
	var after []func()
	ctx = context.WithValue(ctx, afterReplyKey{}, func(f func()) { after = append(after, f) })
	res, qerr := s.d.Execute(ctx, Request{Name: r.Method, Args: args, ID: r.ID.String(), Origin: "jsonrpc"})
	if qerr != nil {
		code := int64(codeQMPError)
		if qerr.Class == ClassCommandNotFound {
			code = codeCommandNotFound
		}
		e := &jsonrpc2.Error{Code: code, Message: qerr.Desc}
		e.SetError(qerr)
		return nil, e, after
	}
	return res, nil, after
}

func (s *JSONRPCServer) handleConn(nc net.Conn) {
	log := s.log.With().Str("remote", nc.RemoteAddr().String()).Logger()
	log.Debug().Msg("JSON-RPC connection opened")
	defer log.Debug().Msg("JSON-RPC connection closed")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn := jsonrpc2.NewConn(ctx, jsonrpc2.NewBufferedStream(nc, jsonrpc2.PlainObjectCodec{}), rpcHandler{s})
	defer conn.Close()
	events, unsub := s.d.Subscribe(1024)
	defer unsub()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			var n rpcEvent
			n.Event, n.Data = ev.Name, ev.Data
			us := ev.Time.UnixMicro()
			n.Timestamp.Seconds, n.Timestamp.Microseconds = us/1e6, us%1e6
			conn.Notify(ctx, "event", n)
		case <-conn.DisconnectNotify():
			return
		}
	}
}
