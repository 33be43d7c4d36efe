package qjson

import (
	"slices"
	"testing"
)

// The strings QEMU 7.2 prints for these values (QSD's replies and json:
// file names): buckets decide the order, ties go to the member added last.
func TestAppendLikeQEMU(t *testing.T) {
	type version struct {
		Major int `json:"major"`
		Minor int `json:"minor"`
		Micro int `json:"micro"`
	}
	o := &Object{}
	o.Set("driver", "qcow2")
	o.Set("file", map[string]any{"driver": "file", "filename": "a.qcow2", "locking": "off"})
	o.Set("driver", "raw") // replaced in place
	for _, c := range []struct {
		v    any
		want string
	}{
		// micro and minor share bucket 225; QAPI adds micro last.
		{version{7, 2, 22}, `{"micro": 22, "minor": 2, "major": 7}`},
		{map[string]any{"c": 1, "j": 2}, `{"j": 2, "c": 1}`},
		{o, `{"driver": "raw", "file": {"locking": "off", "driver": "file", "filename": "a.qcow2"}}`},
		{[]any{"é😀\x01<&>\x7f", nil, true, 1.5}, `["\u00E9\uD83D\uDE00\u0001<&>\u007F", null, true, 1.5]`},
		{"a,b:{c}", `"a,b:{c}"`},
	} {
		got, err := Append([]byte("x"), c.v)
		if err != nil || string(got) != "x"+c.want {
			t.Errorf("%#v: got %s (%v), want %s", c.v, got, err, c.want)
		}
	}
	if got, want := Order([]string{"minor", "micro", "major"}), []string{"micro", "minor", "major"}; !slices.Equal(got, want) {
		t.Errorf("Order: %v, want %v", got, want)
	}
	if Bucket("micro") != 225 || Bucket("minor") != 225 || Bucket("driver") != 239 {
		t.Errorf("buckets: %d %d %d", Bucket("micro"), Bucket("minor"), Bucket("driver"))
	}
}

type benchInfo struct {
	File       string         `json:"file"`
	NodeName   string         `json:"node-name,omitempty"`
	Ro         bool           `json:"ro"`
	Drv        string         `json:"drv"`
	Depth      int64          `json:"backing_file_depth"`
	Encrypted  bool           `json:"encrypted"`
	Detect     string         `json:"detect_zeroes"`
	Bps        int64          `json:"bps"`
	BpsRd      int64          `json:"bps_rd"`
	BpsWr      int64          `json:"bps_wr"`
	Iops       int64          `json:"iops"`
	IopsRd     int64          `json:"iops_rd"`
	IopsWr     int64          `json:"iops_wr"`
	Image      map[string]any `json:"image"`
	Cache      map[string]any `json:"cache"`
	WriteThres int64          `json:"write_threshold"`
}

// BenchmarkAppend prints a query-named-block-nodes reply of 1,000 nodes.
func BenchmarkAppend(b *testing.B) {
	v := make([]benchInfo, 1000)
	for i := range v {
		v[i] = benchInfo{File: "/tmp/x.qcow2", NodeName: "node", Drv: "qcow2", Detect: "off",
			Image: map[string]any{"filename": "/tmp/x.qcow2", "format": "qcow2", "virtual-size": 1 << 30, "dirty-flag": false},
			Cache: map[string]any{"writeback": true, "direct": false, "no-flush": false}}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Append(nil, v); err != nil {
			b.Fatal(err)
		}
	}
}
