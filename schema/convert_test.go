package schema

import "testing"

// Sizes as qemu-storage-daemon 7.2 took or refused them
// (--object memory-backend-ram,size=...).
func TestParseSize(t *testing.T) {
	ok := []struct {
		in   string
		want uint64
	}{
		{"0", 0}, {"1k", 1024}, {"1K", 1024}, {"1.5k", 1536}, {"1b", 1}, {"1B", 1},
		{"0x10", 16}, {"0x10k", 16 << 10}, {" 5", 5}, {"+5", 5}, {"1m", 1 << 20}, {"1t", 1 << 40},
		{"1P", 1 << 50}, {"1E", 1 << 60}, {"18446744073709551615", 1<<64 - 1},
		{"1.", 1}, {"1.k", 1024}, {"010", 10}, {"1.5e", 3 << 59}, {"1.1234567890123k", 1150},
		{"0.5k", 512}, {"1.0009765625k", 1025}, {"15.5E", 31 << 59},
	}
	for _, tc := range ok {
		got, valid := parseSize(tc.in)
		if !valid || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", tc.in, got, valid, tc.want)
		}
	}
	for _, in := range []string{"0x1.8k", "1e3", "16E", "-1", "-0", "18446744073709551616", "1.5", "",
		"1kB", ".5k", "1.0000000000000000001", "0.5", "k", "1 k", "1.5B", "0x", "0.1B", "1.x", "1e-3k"} {
		if got, valid := parseSize(in); valid {
			t.Errorf("parseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseIntegers(t *testing.T) {
	ints := []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0", 0, true}, {"-5", -5, true}, {" 5", 5, true}, {"+5", 5, true}, {"0x10", 16, true},
		{"-0x10", -16, true}, {"010", 8, true}, {"08", 0, false}, {"5 ", 0, false}, {"", 0, false},
		{"0x", 0, false}, {"1k", 0, false}, {"9223372036854775807", 1<<63 - 1, true},
		{"-9223372036854775808", -1 << 63, true}, {"9223372036854775808", 0, false},
		{"-9223372036854775809", 0, false}, {"99999999999999999999", 0, false}, {"-", 0, false},
	}
	for _, tc := range ints {
		got, ok := parseInt64(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseInt64(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	uints := []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"18446744073709551615", 1<<64 - 1, true}, {"-1", 1<<64 - 1, true},
		{"-18446744073709551615", 1, true}, {"18446744073709551616", 0, false}, {"x", 0, false},
		{"0X1f", 31, true}, {"077", 63, true},
	}
	for _, tc := range uints {
		got, ok := parseUint64(tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseUint64(%q) = %d, %v; want %d, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
	for in, want := range map[string]bool{"on": true, "yes": true, "true": true, "y": true,
		"off": false, "no": false, "false": false, "n": false} {
		if got, ok := parseBool(in); !ok || got != want {
			t.Errorf("parseBool(%q) = %v, %v", in, got, ok)
		}
	}
	for _, in := range []string{"ON", "1", "0", "", "Yes", "t"} {
		if _, ok := parseBool(in); ok {
			t.Errorf("parseBool(%q) accepted", in)
		}
	}
}
