module fastbuild.invalid/fsutil-oracle

go 1.26.3

require (
	// Pinned through BuildKit so every dependency resolves to the versions buildctl v0.32.2 uses.
	github.com/moby/buildkit v0.32.2
	github.com/moby/patternmatcher v0.6.1
	github.com/tonistiigi/fsutil v0.0.0-20260717003753-6d9dc2ebad62
)

require (
	github.com/containerd/continuity v0.5.0 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	github.com/planetscale/vtprotobuf v0.6.1-0.20240319094008-0393e58bdf10 // indirect
	golang.org/x/sync v0.22.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
	google.golang.org/protobuf v1.36.12-0.20260120151049-f2248ac996af // indirect
)
