package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// Set at link time where the build has no VCS to stamp from, as in the
// image, whose build context leaves .git out (the Dockerfile passes its
// VERSION, REVISION and CREATED build args):
//
//	go build -ldflags "-X main.version=0.1.0 -X main.revision=$(git rev-parse HEAD) -X main.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)" ./cmd/broker
//
// A value set here wins over the build information's.
var version, revision, buildDate string

// buildVersion describes the binary from the build information the Go
// toolchain embeds: the module version (a tag, or a pseudo-version from the
// VCS), and with VCS stamping (the default for `go build` in a checkout)
// the revision, its commit time and whether the tree had local changes.
// The date is the commit's, which keeps builds reproducible, unless the
// linker set a build date.
type buildVersion struct {
	Module, Version, Revision, Date, Go string
	Modified                            bool
}

// linked are the values set with -ldflags -X.
type linked struct{ version, revision, date string }

func readBuildVersion() buildVersion {
	l := linked{version: version, revision: revision, date: buildDate}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		bi = &debug.BuildInfo{}
	}
	return versionOf(bi, l)
}

func versionOf(bi *debug.BuildInfo, l linked) buildVersion {
	v := buildVersion{Module: bi.Main.Path, Version: bi.Main.Version, Go: bi.GoVersion}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Date = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	if l.version != "" {
		v.Version = l.version
	}
	if l.revision != "" {
		// Local changes are known of the stamped revision only.
		v.Modified = v.Modified && l.revision == v.Revision
		v.Revision = l.revision
	}
	if l.date != "" {
		v.Date = l.date
	}
	return v
}

// String is what `broker version` and `broker --version` print.
func (v buildVersion) String() string {
	unknown := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	rev := unknown(v.Revision)
	if v.Revision == "" {
		rev += " (built without VCS information)"
	} else if v.Modified {
		rev += " (with local modifications)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "broker %s\n", unknown(v.Version))
	fmt.Fprintf(&b, "  module:   %s\n", unknown(v.Module))
	fmt.Fprintf(&b, "  revision: %s\n", rev)
	fmt.Fprintf(&b, "  date:     %s\n", unknown(v.Date))
	fmt.Fprintf(&b, "  go:       %s\n", unknown(v.Go))
	return b.String()
}
