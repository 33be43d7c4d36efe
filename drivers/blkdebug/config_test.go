package blkdebug

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// configCases are config files with what qemu-storage-daemon 7.2 said
// about them (its blockdev-add error, "" when it accepted the file).
var configCases = []struct{ file, err string }{
	{"[inject-error]\nevent = \"read_aio\"\n", ""},
	{"event = \"read_aio\"\n", "no group defined"},
	// An unquoted value scans as the key alone, with an empty value.
	{"[inject-error]\nevent = read_aio\n", "invalid parameter value: "},
	{"[nosuch]\nevent = \"read_aio\"\n", "There is no option group 'nosuch'"},
	{"[inject-error]\nevent = \"nosuch\"\n", "invalid parameter value: nosuch"},
	{"[inject-error]\nfoo = \"x\"\n", "Invalid parameter 'foo'"},
	{"[inject-error]\nerrno = \"x\"\n", "Parameter 'errno' expects a number"},
	{"[inject-error]\nevent = \"read_aio\"\nonce = \"x\"\n", "Parameter 'once' expects 'on' or 'off'"},
	{"[inject-error]\nevent = \"read_aio\"\niotype = \"x\"\n", "invalid parameter value: x"},
	{"[set-state]\nevent = \"read_aio\"\n", ""},
	{"[inject-error \"a\"]\nevent = \"read_aio\"\n[inject-error \"a\"]\nevent = \"read_aio\"\n", "Duplicate ID 'a' for inject-error"},
	{"[inject-error \"1a\"]\nevent = \"read_aio\"\n", "Parameter 'id' expects an identifier"},
	{"[inject-error]\nstate = \"-1\"\nevent = \"read_aio\"\n", ""},
	{"[inject-error]\n  event   =   \"read_aio\"  junk\n", ""},
	// The key is the first word: `event=""` is one.
	{"[inject-error]\n\n# c\n event=\"\"\n", "Invalid parameter 'event=\"\"'"},
	{"[inject-error]\n\r\n", "parse error"},
	{"", ""},
	{"[inject-error]", "Missing event name for rule"},
	{"[inject-error] junk\nevent = \"read_aio\"\n", ""},
	{"[]\n", "no group defined"},
	{"[inject-error\n", "There is no option group 'inject-error\n'"},
	{"[inject-error]\nevent = \"read_aio\"\nonce = \"y\"\n", ""},
	{"[inject-error]\nevent = \"read_aio\"\nonce = \"yes\"\n", ""},
	{"[inject-error]\nevent = \"read_aio\"\nerrno = \"99999999999999999999\"\n", "Value '99999999999999999999' is too large for parameter 'errno'"},
	{"[inject-error]\nevent = \"read_aio\"\nerrno = \" 0x1f\"\n", ""},
	{"[inject-error]\nevent = \"read_aio\"\nerrno = \"5 \"\n", "Parameter 'errno' expects a number"},
	// A failed section scan leaves its text as the last section's group.
	{"[inject-error]\nevent = \"read_aio\"\n[]\n", "There is no option group ']'"},
	{"[inject-error]\nevent = \"read_aio\n", "invalid parameter value: read_aio\n"},
	{"[inject-error]\nid = \"x\"\nevent = \"read_aio\"\n", ""},
	{"[set-state]\nevent = \"read_aio\"\niotype = \"read\"\n", "Invalid parameter 'iotype'"},
	{"[inject-error]\nevent = \"none\"\n", ""},
	// Of several bad keys, the first in QDict's hash order is named.
	{"[inject-error]\nk1 = \"1\"\nk2 = \"1\"\nk3 = \"1\"\nk4 = \"1\"\nk5 = \"1\"\nk6 = \"1\"\n", "Invalid parameter 'k5'"},
	{"[inject-error]\nabc = \"1\"\nabd = \"1\"\nabe = \"1\"\n", "Invalid parameter 'abe'"},
	// Lines are read 1023 bytes at a time: the rest is another line.
	{"[inject-error]\nevent = \"read_aio\"\n" + strings.Repeat("a", 1022) + "  b = \"1\"\n", "Invalid parameter 'b'"},
	{"[inject-error]\x00\nevent = \"read_aio\"\n", ""},
	{"[inject-error]\nevent = \"read_aio\"\n\x00x\n", "parse error"},
}

func TestConfigLikeQSD(t *testing.T) {
	dir := t.TempDir()
	for i, tc := range configCases {
		p := filepath.Join(dir, "c.cfg")
		if err := os.WriteFile(p, []byte(tc.file), 0o644); err != nil {
			t.Fatal(err)
		}
		_, _, err := configRules(p)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.err {
			t.Errorf("case %d %q: error %q, want %q", i, tc.file, got, tc.err)
		}
	}
	if _, _, err := configRules(dir); err == nil || err.Error() != "Cannot read config file: Is a directory" {
		t.Errorf("directory: %v", err)
	}
	if _, _, err := configRules(filepath.Join(dir, "nosuch")); err == nil || err.Error() != "Could not read blkdebug config file: No such file or directory" {
		t.Errorf("missing file: %v", err)
	}
}

// The rules a file gives: inject-error rules first, in file order, then
// set-state rules; numbers as C's strtoull reads them, kept in C ints.
func TestConfigRules(t *testing.T) {
	p := filepath.Join(t.TempDir(), "c.cfg")
	file := "[set-state]\nevent = \"flush_to_disk\"\nnew_state = \"2\"\n" +
		"[inject-error]\nevent = \"read_aio\"\nstate = \"0x2\"\nerrno = \"034\"\nsector = \"-1\"\nonce = \"on\"\niotype = \"read\"\n" +
		"[inject-error]\nevent = \"write_aio\"\nsector = \"8\"\nstate = \"4294967297\"\n"
	if err := os.WriteFile(p, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	inj, sets, err := configRules(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(inj) != 2 || len(sets) != 1 {
		t.Fatalf("%d inject, %d set-state rules", len(inj), len(sets))
	}
	r := inj[0]
	if r.event != "read_aio" || r.state != 2 || r.errno != 28 || !r.any || !r.once || r.mask != 1<<IORead {
		t.Errorf("first rule: %+v", *r)
	}
	r = inj[1]
	if r.event != "write_aio" || r.state != 1 || r.errno != 5 || r.any || r.offset != 4096 || r.once || r.mask != defaultIOMask {
		t.Errorf("second rule: %+v", *r)
	}
	if s := sets[0]; s.event != "flush_to_disk" || s.state != 0 || s.newState != 2 {
		t.Errorf("set-state rule: %+v", s)
	}
}

// FuzzConfig: any file parses or fails with a message, never panics, and
// the same file always gives the same answer.
func FuzzConfig(f *testing.F) {
	for _, tc := range configCases {
		f.Add(tc.file)
	}
	f.Add(strings.Repeat("x", 1100) + "\n[inject-error]\nevent = \"l2_load\"\n")
	f.Add("[inject-error]\x00\nevent = \"l2_load\"\n")
	f.Fuzz(func(t *testing.T, file string) {
		rules, err := parseConfig(file)
		rules2, err2 := parseConfig(file)
		if (err == nil) != (err2 == nil) || len(rules) != len(rules2) {
			t.Fatalf("two parses differ: %v / %v", err, err2)
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		for _, r := range rules {
			if _, ok := cfgGroups[r.group]; !ok {
				t.Fatalf("rule of unknown group %q", r.group)
			}
		}
	})
}
