package keyval

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		in, implied string
		want        string // JSON
	}{
		{"", "", `{}`},
		{"a=1,b=2", "", `{"a":"1","b":"2"}`},
		{"a=1,", "", `{"a":"1"}`},
		{"a=", "", `{"a":""}`},
		{"a=x,,y,b=2", "", `{"a":"x,y","b":"2"}`},
		{"a=x,,", "", `{"a":"x,"}`},
		{"a=x=y", "", `{"a":"x=y"}`},
		{"a=1,a=2", "", `{"a":"2"}`},
		{"file.driver=file,file.filename=d.img,driver=raw", "",
			`{"driver":"raw","file":{"driver":"file","filename":"d.img"}}`},
		{"a.b.c=1,a.b.d=2,a.e=3", "", `{"a":{"b":{"c":"1","d":"2"},"e":"3"}}`},
		{"a.1=y,a.0=x", "", `{"a":["x","y"]}`},
		{"a.0.b=1,a.0.c=2,a.1.b=3", "", `{"a":[{"b":"1","c":"2"},{"b":"3"}]}`},
		{"a.0.0=x", "", `{"a":[["x"]]}`},
		{"a.01=x,a.0=y", "", `{"a":["y","x"]}`},
		{"null-co,node-name=n", "driver", `{"driver":"null-co","node-name":"n"}`},
		{"driver", "driver", `{"driver":"driver"}`},
		{"socket,path=/tmp/s,server=on", "backend", `{"backend":"socket","path":"/tmp/s","server":"on"}`},
		{"driver=null-co,,node-name=n", "driver", `{"driver":"null-co,node-name=n"}`},
		{"__com.redhat_x=1", "", `{"__com.redhat_x":"1"}`},
		{"a-b_c=1,A=2", "", `{"A":"2","a-b_c":"1"}`},
		{"a=" + strings.Repeat("v", 1000), "", `{"a":"` + strings.Repeat("v", 1000) + `"}`},
		{strings.Repeat("k", 127) + "=1", "", `{"` + strings.Repeat("k", 127) + `":"1"}`},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in, tc.implied)
		if err != nil {
			t.Errorf("Parse(%q, %q): %v", tc.in, tc.implied, err)
			continue
		}
		b, _ := json.Marshal(got)
		if string(b) != tc.want {
			t.Errorf("Parse(%q, %q) = %s, want %s", tc.in, tc.implied, b, tc.want)
		}
	}
}

// The messages below were produced by qemu-storage-daemon 7.2
// (--blockdev, implied key "driver").
func TestParseErrors(t *testing.T) {
	long := strings.Repeat("a", 128)
	tests := []struct{ in, implied, want string }{
		{"=x", "driver", "Invalid parameter ''"},
		{",a=1", "driver", "Invalid parameter ''"},
		{"null-co,,x=1", "driver", "Invalid parameter ''"},
		{"a..b=1", "driver", "Invalid parameter 'a..b'"},
		{"a.=1", "driver", "Invalid parameter 'a.'"},
		{"1a=1", "driver", "Invalid parameter '1a'"},
		{"_a=1", "driver", "Invalid parameter '_a'"},
		{"x.0a=1", "", "Invalid parameter 'x.0a'"},
		{"driver=null-co,node-name", "driver", "Expected '=' after parameter 'node-name'"},
		{"driver=null-co,helpx", "driver", "Expected '=' after parameter 'helpx'"},
		{"a", "", "Expected '=' after parameter 'a'"},
		{"a.b=1,a=2", "driver", "Parameters 'a.*' used inconsistently"},
		{"a=2,a.b=1", "driver", "Parameters 'a.*' used inconsistently"},
		{"a.0=x,a.0.b=y", "driver", "Parameters 'a.0.*' used inconsistently"},
		{"a.b.c=1,a.b=2", "driver", "Parameters 'a.b.*' used inconsistently"},
		{"driver=raw,node-name=n,file=x,file.driver=file", "driver", "Parameters 'file.*' used inconsistently"},
		{"driver=raw,node-name=n,file.0=a,file.x=b", "driver", "Parameters 'file.*' used inconsistently"},
		{"driver=null-co,node-name=n,x.1=1,x.0.y=2,x.0=3", "driver", "Parameters 'x.0.*' used inconsistently"},
		{"driver=raw,node-name=n,file.1=a", "driver", "Parameter 'file.0' missing"},
		{"driver=null-co,node-name=n,x.0=1,x.2=2", "driver", "Parameter 'x.1' missing"},
		{"driver=null-co,node-name=n,x.01=1", "driver", "Parameter 'x.0' missing"},
		{"x.99999999999999999999=1", "", "Parameter 'x.0' missing"},
		{long + "=1", "driver", "Parameter '" + long + "' is too long"},
		{"x." + long + "=1", "driver", "Parameter fragment '" + long + "' is too long"},
	}
	for _, tc := range tests {
		got, err := Parse(tc.in, tc.implied)
		if err == nil {
			t.Errorf("Parse(%q, %q) = %v, want error %q", tc.in, tc.implied, got, tc.want)
			continue
		}
		if err.Error() != tc.want {
			t.Errorf("Parse(%q, %q): error %q, want %q", tc.in, tc.implied, err, tc.want)
		}
	}
}

func TestParseHelp(t *testing.T) {
	for _, in := range []string{"help", "?", "driver=null-co,help", "x=1,help", "driver=null-co,?"} {
		_, err := Parse(in, "driver")
		if !errors.Is(err, ErrHelp) {
			t.Errorf("Parse(%q): error %v, want ErrHelp", in, err)
		}
		if err != nil && err.Error() != "Help is not available for this option" {
			t.Errorf("Parse(%q): message %q", in, err)
		}
	}
}

func TestParseDeepNesting(t *testing.T) {
	key := strings.Repeat("a.", 5000) + "a"
	if _, err := Parse(key+"=1", ""); err == nil {
		t.Fatal("expected an error for 5001 levels of nesting")
	}
	key = strings.Repeat("a.", 100) + "a"
	m, err := Parse(key+"=1", "")
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for v := any(m); ; depth++ {
		mm, ok := v.(map[string]any)
		if !ok {
			break
		}
		v = mm["a"]
	}
	if depth != 101 {
		t.Fatalf("depth %d, want 101", depth)
	}
}

// FuzzParse checks that no input crashes the parser and that whatever it
// accepts is a well-formed tree.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"", "a=1", "driver=raw,file.driver=file,file.filename=x,,y",
		"a.0=x,a.1=y", "a.1=x", "null-co,size=1", "help", "a.b=1,a=2",
		"__com.redhat_x.0=1", "a.0.0.0=1,a.0.0.1=2", ",,,", "=,=",
	} {
		f.Add(s, "driver")
		f.Add(s, "")
	}
	f.Fuzz(func(t *testing.T, s, implied string) {
		m, err := Parse(s, implied)
		if err != nil {
			if m != nil {
				t.Fatal("result with error")
			}
			return
		}
		checkTree(t, m)
	})
}

func checkTree(t *testing.T, v any) {
	switch x := v.(type) {
	case string:
	case map[string]any:
		for _, e := range x {
			checkTree(t, e)
		}
	case []any:
		if len(x) == 0 {
			t.Fatal("empty list")
		}
		for _, e := range x {
			if e == nil {
				t.Fatal("hole in list")
			}
			checkTree(t, e)
		}
	default:
		t.Fatalf("unexpected %T in tree", v)
	}
}
