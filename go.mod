module github.com/qbmond/qbmond

go 1.26.8

require (
	github.com/cockroachdb/datadriven v1.0.2
	github.com/digitalocean/go-qemu v0.0.0-20230711162256-2e3d0186973e
	github.com/klauspost/compress v1.20.3
	github.com/rs/zerolog v1.35.1
	github.com/sourcegraph/jsonrpc2 v0.2.3
	golang.org/x/sys v0.49.0
)

require (
	github.com/digitalocean/go-libvirt v0.0.0-20220804181439-8648fbde413e // indirect
	github.com/mattn/go-colorable v0.1.14 // indirect
	github.com/mattn/go-isatty v0.0.20 // indirect
	github.com/pmezard/go-difflib v1.0.0 // indirect
)
