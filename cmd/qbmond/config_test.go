package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseArgsQSDSpelling(t *testing.T) {
	c, err := parseArgs([]string{
		"--chardev", "socket,path=/run/a.sock,server=on,wait=off,id=m0",
		"--chardev", "socket,host=127.0.0.1,port=4444,server=on,wait=off,id=m1",
		"--monitor", "chardev=m0",
		"--monitor", "m1",
		"--qmp", "unix:/run/b.sock",
		"--blockdev", "driver=null-co,node-name=n0",
		"--blockdev=driver=null-co,node-name=n1",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"unix:/run/b.sock", "unix:/run/a.sock", "tcp:127.0.0.1:4444"}
	if strings.Join(c.qmp, " ") != strings.Join(want, " ") {
		t.Errorf("listeners %v, want %v", c.qmp, want)
	}
	if len(c.blockdevs) != 2 || c.blockdevs[1] != "driver=null-co,node-name=n1" {
		t.Errorf("blockdevs %v", c.blockdevs)
	}
}

func TestParseArgsDefaultSocket(t *testing.T) {
	t.Setenv("XDG_RUNTIME_DIR", "/run/user/7")
	c, err := parseArgs(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.qmp) != 1 || c.qmp[0] != "unix:/run/user/7/qbmond/qmp.sock" {
		t.Errorf("default %v", c.qmp)
	}
	t.Setenv("XDG_RUNTIME_DIR", "")
	if s := defaultSocket(); !strings.HasPrefix(s, "/tmp/qbmond-") || !strings.HasSuffix(s, "/qmp.sock") {
		t.Errorf("fallback %s", s)
	}
	// A JSON-RPC listener alone means no default QMP socket.
	c, err = parseArgs([]string{"--jsonrpc", "unix:/x"}, io.Discard)
	if err != nil || len(c.qmp) != 0 {
		t.Errorf("jsonrpc only: %v %v", c.qmp, err)
	}
}

func TestParseArgsErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--monitor", "chardev=nope"}, `--monitor chardev=nope: chardev "nope" not found`},
		{[]string{"--chardev", "socket,path=/a"}, `"id" is missing`},
		{[]string{"--chardev", "file,path=/a,id=x"}, "only 'socket' chardevs"},
		{[]string{"--chardev", "socket,path=/a,id=x", "--chardev", "socket,path=/b,id=x"}, "duplicate"},
		{[]string{"--chardev", "socket,path=/a,id=x,server=off"}, "only listens"},
		{[]string{"--monitor", "chardev=x,mode=readline"}, "mode=control"},
		{[]string{"stray"}, "unexpected argument 'stray'"},
	} {
		_, err := parseArgs(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.args, err, tc.want)
		}
	}
}
