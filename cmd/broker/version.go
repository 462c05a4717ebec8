package main

import (
	"fmt"
	"runtime/debug"
	"strings"
)

// buildVersion describes the binary from the build information the Go
// toolchain embeds: the module version (a tag, or a pseudo-version from the
// VCS), and with VCS stamping (the default for `go build` in a checkout)
// the revision, its commit time and whether the tree had local changes.
// The date is the commit's, which keeps builds reproducible.
type buildVersion struct {
	Module, Version, Revision, Date, Go string
	Modified                            bool
}

func readBuildVersion() buildVersion {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return buildVersion{}
	}
	return versionOf(bi)
}

func versionOf(bi *debug.BuildInfo) buildVersion {
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
