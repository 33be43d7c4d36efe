package qmp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"github.com/rs/zerolog"
	"github.com/sourcegraph/jsonrpc2"
)

// JSON-RPC 2.0 rides on sourcegraph/jsonrpc2 (the house rule), with one
// hand-written piece: rpcStream, the ObjectStream the library reads from
// and writes to. It exists because the library, given a stream of bytes,
// decodes with encoding/json, which takes the last of duplicate keys
// ({"method": "query-version", "method": "quit"} quits), has no size
// limit, replaces invalid UTF-8 with U+FFFD, and on any message it cannot
// represent (malformed JSON, a batch, no method, an object or fractional
// id) ends the connection without the error reply JSON-RPC 2.0 requires;
// a request with "id": null it takes for a notification and never answers.
//
// So rpcStream reads with the QMP reader in strict mode (plain JSON, the
// same size, token and nesting limits as QMP, duplicate keys and invalid
// UTF-8 refused), checks that each message is a JSON-RPC 2.0 request, and
// answers what is not one itself with a JSON-RPC error object: -32700
// (parse error) or -32600 (invalid request), id null when the id could not
// be read. The library only ever sees well-formed requests. Their ids are
// replaced with ids of rpcStream's own making, so that any id JSON-RPC
// allows (string, any number, null) is echoed exactly as sent.
//
// Batches (arrays of requests) are not supported: an array is answered with
// one -32600 error, as the specification answers an empty batch. A client
// sends its requests one after another instead; they are run in order.
//
// Methods are QMP commands: an unknown one gets -32601, arguments that the
// schema refuses (or params that are not an object) -32602, and any other
// QMP error -32000, all with QEMU's description as the message and
// {"class", "desc"} as the data.

// JSON-RPC error codes.
const (
	codeParseError      = jsonrpc2.CodeParseError
	codeInvalidRequest  = jsonrpc2.CodeInvalidRequest
	codeCommandNotFound = jsonrpc2.CodeMethodNotFound
	codeInvalidParams   = jsonrpc2.CodeInvalidParams
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
type rpcHandler struct {
	s      *JSONRPCServer
	stream *rpcStream
}

func (h rpcHandler) Handle(ctx context.Context, conn *jsonrpc2.Conn, r *jsonrpc2.Request) {
	res, rerr, after := h.s.call(ctx, r, h.stream.clientID(r.ID))
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

func (s *JSONRPCServer) call(ctx context.Context, r *jsonrpc2.Request, id any) (any, *jsonrpc2.Error, []func()) {
	var args any
	if r.Params != nil {
		v, err := ParseJSON(*r.Params)
		if err != nil { // rpcStream checked it: cannot happen
			return nil, &jsonrpc2.Error{Code: codeParseError, Message: err.Error()}, nil
		}
		if _, ok := v.(map[string]any); !ok {
			return nil, &jsonrpc2.Error{Code: codeInvalidParams, Message: "Invalid params: params must be an object"}, nil
		}
		args = v
	}
	var after []func()
	ctx = context.WithValue(ctx, afterReplyKey{}, func(f func()) { after = append(after, f) })
	res, qerr := s.d.Execute(ctx, Request{Name: r.Method, Args: args, ID: id, Origin: "jsonrpc"})
	if qerr != nil {
		code := int64(codeQMPError)
		switch {
		case qerr.Class == ClassCommandNotFound:
			code = codeCommandNotFound
		case qerr.badArgs:
			code = codeInvalidParams
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
	stream := newRPCStream(nc, log)
	conn := jsonrpc2.NewConn(ctx, stream, rpcHandler{s, stream})
	defer conn.Close()

	// Events wait in the connection's queue, never dropped, as on QMP.
	q := newOutQueue()
	unsub := s.d.SubscribeFunc(func(ev Event) {
		var n rpcEvent
		n.Event, n.Data = ev.Name, ev.Data
		us := ev.Time.UnixMicro()
		n.Timestamp.Seconds, n.Timestamp.Microseconds = us/1e6, us%1e6
		b, err := json.Marshal(n)
		if err != nil {
			log.Error().Err(err).Str("event", ev.Name).Msg("cannot encode event")
			return
		}
		if ok, backlog, lines := q.event(b); !ok {
			log.Warn().Str("event", ev.Name).Int("backlog_bytes", backlog).Int("backlog_lines", lines).
				Msg("JSON-RPC client too far behind reading events; closing its connection")
			nc.Close()
		}
	})
	defer unsub()
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		var spare []outLine
		for {
			lines := q.take(spare)
			if lines == nil {
				return
			}
			for i, l := range lines {
				if err := conn.Notify(ctx, "event", json.RawMessage(l.b)); err != nil {
					q.markDead()
					return
				}
				lines[i] = outLine{}
			}
			spare = lines
		}
	}()
	<-conn.DisconnectNotify()
	unsub()
	q.markDead()
	<-sent
}

// rpcStream is the jsonrpc2.ObjectStream described at the top of the file.
type rpcStream struct {
	conn net.Conn
	dec  *Decoder
	log  zerolog.Logger

	wmu sync.Mutex // one message at a time on the connection

	mu  sync.Mutex
	seq uint64
	ids map[string]json.RawMessage // our id → the client's, until answered
}

func newRPCStream(c net.Conn, log zerolog.Logger) *rpcStream {
	return &rpcStream{conn: c, dec: NewStrictDecoder(c), log: log, ids: map[string]json.RawMessage{}}
}

func (s *rpcStream) Close() error { return s.conn.Close() }

// rpcRequest is what the library is given: a checked request with our id.
type rpcRequest struct {
	JSONRPC string `json:"jsonrpc"`
	Method  string `json:"method"`
	Params  any    `json:"params,omitempty"`
	ID      string `json:"id,omitempty"`
}

// ReadObject returns the next well-formed request to the library,
// answering everything else itself.
func (s *rpcStream) ReadObject(v any) error {
	for {
		msg, err := s.dec.Next()
		if err != nil {
			if IsParseError(err) {
				if werr := s.writeError(nil, codeParseError, err.Error()); werr != nil {
					return werr
				}
				continue
			}
			return err
		}
		req, id, rerr := s.check(msg)
		if rerr != "" {
			if werr := s.writeError(id, codeInvalidRequest, "Invalid Request: "+rerr); werr != nil {
				return werr
			}
			continue
		}
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		return json.Unmarshal(b, v)
	}
}

// check validates one JSON-RPC 2.0 request. On failure it returns the
// reason and the id to answer with (nil when it could not be read).
func (s *rpcStream) check(msg any) (req rpcRequest, id json.RawMessage, reason string) {
	m, ok := msg.(map[string]any)
	if _, batch := msg.([]any); batch {
		return req, nil, "batch requests are not supported"
	}
	if !ok {
		return req, nil, "a request must be a JSON object"
	}
	rawID, hasID := m["id"]
	if hasID {
		switch rawID.(type) {
		case string, json.Number, nil:
			id, _ = json.Marshal(rawID)
		default:
			return req, nil, "member 'id' must be a string, a number or null"
		}
	}
	for _, k := range qdictOrder(m) {
		switch k {
		case "jsonrpc", "method", "params", "id":
		default:
			return req, id, fmt.Sprintf("member '%s' is unexpected", k)
		}
	}
	if v, ok := m["jsonrpc"].(string); !ok || v != "2.0" {
		return req, id, `member 'jsonrpc' must be "2.0"`
	}
	method, present := m["method"]
	if !present {
		return req, id, "member 'method' is missing"
	}
	if req.Method, ok = method.(string); !ok {
		return req, id, "member 'method' must be a string"
	}
	switch p := m["params"].(type) {
	case nil:
	case map[string]any, []any:
		req.Params = p
	default:
		return req, id, "member 'params' must be an object or an array"
	}
	req.JSONRPC = "2.0"
	if hasID {
		s.mu.Lock()
		s.seq++
		req.ID = strconv.FormatUint(s.seq, 10)
		s.ids[req.ID] = id
		s.mu.Unlock()
	}
	return req, id, ""
}

// clientID returns the id the client sent for one of our ids, for logs.
func (s *rpcStream) clientID(id jsonrpc2.ID) any {
	s.mu.Lock()
	defer s.mu.Unlock()
	if raw, ok := s.ids[id.Str]; ok {
		return raw
	}
	return nil
}

// WriteObject writes a message from the library, giving a reply back the
// id its request came with.
func (s *rpcStream) WriteObject(obj any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	b = s.restoreID(b)
	return s.write(b)
}

// restoreID replaces our id at the head of a reply ({"id":"N",...: the
// library writes the id first) with the client's.
func (s *rpcStream) restoreID(b []byte) []byte {
	const head = `{"id":"`
	if !bytes.HasPrefix(b, []byte(head)) {
		return b
	}
	end := bytes.IndexByte(b[len(head):], '"')
	if end < 0 {
		return b
	}
	ours := string(b[len(head) : len(head)+end])
	s.mu.Lock()
	theirs, ok := s.ids[ours]
	delete(s.ids, ours)
	s.mu.Unlock()
	if !ok {
		return b
	}
	out := make([]byte, 0, len(b)+len(theirs))
	out = append(out, `{"id":`...)
	out = append(out, theirs...)
	return append(out, b[len(head)+end+1:]...)
}

type rpcErrorReply struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Error   struct {
		Code    int64  `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError answers a message the library never sees.
func (s *rpcStream) writeError(id json.RawMessage, code int64, msg string) error {
	r := rpcErrorReply{JSONRPC: "2.0", ID: id}
	if r.ID == nil {
		r.ID = json.RawMessage("null")
	}
	r.Error.Code, r.Error.Message = code, msg
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	s.log.Debug().Int64("code", code).Str("error", msg).Msg("JSON-RPC message refused")
	return s.write(b)
}

func (s *rpcStream) write(b []byte) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	_, err := s.conn.Write(append(b, '\n'))
	if errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) {
		return io.EOF
	}
	return err
}
