package qmp_test

// Cases checked against qemu-storage-daemon 7.2: each input was sent on a
// fresh connection to QSD, followed by a marker request, and QSD's replies
// are the expected lines ("VERSION" stands for query-version's return).
// The marker's reply proves that the reader resynchronised.

type qsdCase struct {
	in   string
	want []string
}

// negotiatedCases run after qmp_capabilities.
var negotiatedCases = []qsdCase{
	{in: "{\"execute\": }", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "]", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "1", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "\"x\"", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "[1,2]", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1}}", want: []string{
		"{\"return\": VERSION, \"id\": 1}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\" @ \"id\":2}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@@@ {\"execute\":\"query-version\",\"id\":3}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"return\": VERSION, \"id\": 3}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":tru}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword 'tru'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":True}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray 'T'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":012}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '01'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":-0}", want: []string{
		"{\"return\": VERSION, \"id\": 0}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1.5e3}", want: []string{
		"{\"return\": VERSION, \"id\": 1500}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":18446744073709551615}", want: []string{
		"{\"return\": VERSION, \"id\": 18446744073709551615}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":18446744073709551616}", want: []string{
		"{\"return\": VERSION, \"id\": 1.8446744073709552e+19}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":-9223372036854775809}", want: []string{
		"{\"return\": VERSION, \"id\": -9.2233720368547758e+18}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1.0}", want: []string{
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1e400}", want: []string{
		// QSD prints "inf", which is not JSON; qbmond echoes the literal.
		"{\"return\": VERSION, \"id\": 1e400}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\u00e9\\ud83d\\ude00\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\u00E9\\uD83D\\uDE00\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\ud800\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\ud800 is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\u0000\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\u0000\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\q\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid escape sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\'\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"'\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"a\tb\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\\"a\\t'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xc3\xa9\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\u00E9\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xc3\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xef\xbf\xbf\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xed\xa0\x80\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xc0\x80\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\u0000\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xff\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\\"\\uFFFD'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1,\"id\":2}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, duplicate key\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{1:2}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, key is not a string in object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[1 2]}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expected separator in list\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[1,]}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"a\":1,}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"a\" 1}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, missing : in object pair\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"/\\/\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"//\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{'execute':'query-version','id':'\"'}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\\"\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":%d}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '%'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":0.1}", want: []string{
		"{\"return\": VERSION, \"id\": 0.10000000000000001}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":-0.0}", want: []string{
		"{\"return\": VERSION, \"id\": -0}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\u007f\\u001f/<>&\\u2028\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\u007F\\u001F/<>&\\u2028\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[]}", want: []string{
		"{\"return\": VERSION, \"id\": []}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{}}", want: []string{
		"{\"return\": VERSION, \"id\": {}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"b\":1,\"a\":2,\"c\":[true,false,null]}}", want: []string{
		"{\"return\": VERSION, \"id\": {\"a\": 2, \"b\": 1, \"c\": [true, false, null]}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":1,\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' must be a string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"arguments\":[],\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"arguments\":null,\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"foo\":1,\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"exec-oob\":\"query-version\",\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"exec-oob\":\"query-version\",\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"exec-oob\":1,\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"control\":{},\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'control' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"arguments\":{\"x\":1},\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"nope\",\"arguments\":{\"x\":1},\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"nope\",\"arguments\":7,\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"id\":1,\"foo\":2,\"execute\":\"nope\"}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'foo' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"id\":1,\"arguments\":2,\"execute\":3}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' must be a string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"id\":9}", want: []string{
		"{\"id\": 9, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, command ignored\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\u12\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\u12\\\" is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\uZZZZ\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\uZZZZ is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\ud800\\u0041\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\ud800 is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\ud800x\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\ud800 is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\udc00\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\udc00 is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\uffff\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\uffff is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\ufdd0\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\ufdd0 is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\ud83f\\udffe\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, \\\\ud83f\\\\udffe is not a valid Unicode character\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xe0\x80\x80\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xf4\x90\x80\x80\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xf0\x9f\x98\x80\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\uD83D\\uDE00\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xc1\x81\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\xf8\x88\x80\x80\x80\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid UTF-8 sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1\xc3}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\\xc3\xa9\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid escape sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":- 1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '- '\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1.}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '1.}'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1e}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '1e}'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":.5}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '.'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1E+2}", want: []string{
		"{\"return\": VERSION, \"id\": 100}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"x\"}\x01{\"execute\":\"query-version\",\"id\":\"y\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"x\"}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\u0001'\"}}",
		"{\"return\": VERSION, \"id\": \"y\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"x\"}\xff{\"execute\":\"query-version\",\"id\":\"y\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"x\"}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"return\": VERSION, \"id\": \"y\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"x\"\xff,\"id\":\"y\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[\"x\"\r]}", want: []string{
		"{\"return\": VERSION, \"id\": [\"x\"]}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@\xff{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@\xfe{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@\x01{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\u0001'\"}}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@\x7f{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "\xff\xff{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":tru\xc3}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"abc\n\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\\"abc\\n'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":'it\"s'}", want: []string{
		"{\"return\": VERSION, \"id\": \"it\\\"s\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"it's\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"it's\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1.5E-3}", want: []string{
		"{\"return\": VERSION, \"id\": 0.0015}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":NULL}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray 'N'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":nul}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword 'nul'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":nullx}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid keyword 'nullx'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":-}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '-}'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":--1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '--'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":0x10}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expected separator in dict\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1e+}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '1e+}'\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[1,,2]}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"a\":1 \"b\":2}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expected separator in dict\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"a\"}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, missing : in object pair\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{:1}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{]}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "[[]]]", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":null}", want: []string{
		"{\"return\": VERSION, \"id\": null}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":[null,{\"a\":null}]}", want: []string{
		"{\"return\": VERSION, \"id\": [null, {\"a\": null}]}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "null", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "true", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"\\b\\f\\n\\r\\t\\/\"}", want: []string{
		"{\"return\": VERSION, \"id\": \"\\b\\f\\n\\r\\t/\"}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{[1]:2}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, key is not a string in object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"\\q\":2}}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, invalid escape sequence in string\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":\"x\" \"y\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expected separator in dict\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\"}{\"execute\":\"query-version\",\"id\":2}", want: []string{
		"{\"return\": VERSION}",
		"{\"return\": VERSION, \"id\": 2}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1}1", want: []string{
		"{\"return\": VERSION, \"id\": 1}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: " \t\r\n{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":1.0e0}", want: []string{
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":-9223372036854775808}", want: []string{
		"{\"return\": VERSION, \"id\": -9223372036854775808}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":00}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '00'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
}

// orderCases depend on QEMU's member order (see qdict.go).
var orderCases = []qsdCase{
	{in: "{\"execute\":1,\"bar\":2}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'bar' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"arguments\":1,\"bar\":1,\"execute\":\"x\"}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'bar' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"bar\":1,\"x\":2}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'x' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"zz\":1,\"x\":2,\"bar\":3}}", want: []string{
		"{\"return\": VERSION, \"id\": {\"x\": 2, \"bar\": 3, \"zz\": 1}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"id\":{\"execute\":1,\"exec-oob\":2,\"control\":3,\"id\":4,\"foo\":5}}", want: []string{
		"{\"return\": VERSION, \"id\": {\"exec-oob\": 2, \"control\": 3, \"execute\": 1, \"id\": 4, \"foo\": 5}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"query-version\",\"control\":1,\"exec-oob\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
}

// rawCases run on a connection that has not negotiated.
var rawCases = []qsdCase{
	{in: "{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"exec-oob\":\"query-version\",\"id\":2}", want: []string{
		"{\"id\": 2, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"foo\"]},\"id\":3}", want: []string{
		"{\"id\": 3, \"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'null' does not accept value 'foo'\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":\"oob\"},\"id\":4}", want: []string{
		"{\"id\": 4, \"error\": {\"class\": \"GenericError\", \"desc\": \"Invalid parameter type for 'enable', expected: array\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"x\":1},\"id\":5}", want: []string{
		"{\"id\": 5, \"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"nope\",\"id\":55}", want: []string{
		"{\"id\": 55, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"nope\",\"arguments\":{\"x\":1},\"id\":56}", want: []string{
		"{\"id\": 56, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]},\"id\":6}\n{\"exec-oob\":\"query-version\",\"id\":7}\n{\"exec-oob\":\"blockdev-add\",\"id\":8,\"arguments\":{}}\n{\"exec-oob\":\"nope\",\"id\":9}\n{\"exec-oob\":\"qmp_capabilities\",\"id\":10}\n{\"execute\":\"query-version\",\"exec-oob\":\"query-version\",\"id\":11}\n{\"exec-oob\":\"query-version\"}\n{\"exec-oob\":1,\"id\":12}\n{\"execute\":\"qmp_capabilities\",\"arguments\":{\"x\":1},\"id\":13}\n{\"execute\":\"qmp_capabilities\",\"id\":14}", want: []string{
		"{\"return\": {}, \"id\": 6}",
		"{\"id\": 7, \"error\": {\"class\": \"GenericError\", \"desc\": \"The command query-version does not support OOB\"}}",
		"{\"id\": 8, \"error\": {\"class\": \"GenericError\", \"desc\": \"The command blockdev-add does not support OOB\"}}",
		"{\"id\": 9, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}}",
		"{\"id\": 10, \"error\": {\"class\": \"GenericError\", \"desc\": \"The command qmp_capabilities does not support OOB\"}}",
		"{\"id\": 11, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' clashes with 'exec-oob'\"}}",
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"The command query-version does not support OOB\"}}",
		"{\"id\": 12, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' must be a string\"}}",
		"{\"id\": 13, \"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}",
		"{\"id\": 14, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, command ignored\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[]},\"id\":6}\n{\"exec-oob\":\"query-version\",\"id\":7}", want: []string{
		"{\"return\": {}, \"id\": 6}",
		"{\"id\": 7, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\",\"oob\"]},\"id\":6}", want: []string{
		"{\"return\": {}, \"id\": 6}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"arguments\":null,\"id\":6}", want: []string{
		"{\"id\": 6, \"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
	{in: "{\"execute\":\"qmp_capabilities\",\"id\":6}\n{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"return\": {}, \"id\": 6}",
		"{\"return\": VERSION, \"id\": 1}",
		"{\"return\": VERSION, \"id\": \"MARK\"}",
	}},
	{in: "@\n{\"execute\":\"query-version\",\"id\":1}", want: []string{
		"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '@'\"}}",
		"{\"id\": 1, \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
		"{\"id\": \"MARK\", \"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}",
	}},
}
