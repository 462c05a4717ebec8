package handlers

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/mobile-token-broker/broker/broker"
)

// The proxy decides which upstream a request goes to, and how much of that
// upstream it may reach, from the request's path. Upstream servers read
// paths in ways of their own: they decode escapes once or twice, merge "//",
// drop ";" parameters (servlet containers), resolve "." and "..", take "\"
// for "/" (Windows), trim trailing dots and spaces (Windows), compare without
// regard to case, or fold Unicode compatibility characters (full-width ．and
// ／) to ASCII. A path that reads differently there than here could reach a
// path outside its route's base, or a route that is carved out to another
// upstream (/api/internal next to /api). So the proxy accepts only paths
// that every such reading leaves alone, and refuses the rest with 400
// before any upstream is called.

// canonicalPath returns escaped in the one spelling the proxy matches and
// forwards: percent-encoded unreserved characters decoded and every other
// escape in upper case, the normalizations of RFC 3986 sections 6.2.2.1 and
// 6.2.2.2 that do not change what a URI identifies. Without them
// "/api/%69nternal" would miss the /api/internal route and reach the /api
// upstream, which decodes it to /internal. ok is false for a malformed
// escape.
func canonicalPath(escaped string) (canonical string, ok bool) {
	if !strings.Contains(escaped, "%") {
		return escaped, true
	}
	var b strings.Builder
	b.Grow(len(escaped))
	for i := 0; i < len(escaped); i++ {
		c := escaped[i]
		if c != '%' {
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(escaped) || !isHex(escaped[i+1]) || !isHex(escaped[i+2]) {
			return "", false
		}
		v := unhex(escaped[i+1])<<4 | unhex(escaped[i+2])
		if isUnreserved(rune(v)) {
			b.WriteByte(v)
		} else {
			const upperHex = "0123456789ABCDEF"
			b.WriteByte('%')
			b.WriteByte(upperHex[v>>4])
			b.WriteByte(upperHex[v&15])
		}
		i += 2
	}
	return b.String(), true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// Answers to a path the proxy refuses; each says what to change, none
// repeats the path.
var (
	errPathEscape       = broker.Errorf(broker.CodeInvalidRequest, "the request path has an invalid escape")
	errPathEmptySegment = broker.Errorf(broker.CodeInvalidRequest, "the request path has an empty segment (\"//\")")
	errPathDotSegment   = broker.Errorf(broker.CodeInvalidRequest, "the request path has a segment of dots only, or one ending in a dot")
	errPathSeparator    = broker.Errorf(broker.CodeInvalidRequest, "the request path has an encoded \"/\" or \"\\\"")
	errPathParameter    = broker.Errorf(broker.CodeInvalidRequest, "the request path has a \";\" parameter")
	errPathDoubleEscape = broker.Errorf(broker.CodeInvalidRequest, "the request path has an encoded \"%%\" (double encoding)")
	errPathControl      = broker.Errorf(broker.CodeInvalidRequest, "the request path has a control character or whitespace")
	errPathNonASCII     = broker.Errorf(broker.CodeInvalidRequest, "the request path has a character outside ASCII that is not a letter, digit or mark in normalization form NFKC")
	errPathOtherRoute   = broker.Errorf(broker.CodeInvalidRequest, "the request path reads as another route's path when case or trailing dots are ignored")
)

// checkTail validates the canonical escaped path after a route prefix and
// returns it decoded. It accepts "" (the prefix alone) and "/" followed by
// segments separated by "/", where only the last may be empty (a trailing
// slash), and each segment decoded once:
//
//   - is not made of dots only, and does not end in a dot: RFC 3986 section
//     5.2.4 removes "." and ".." segments, section 2.3 makes %2E a ".", and
//     Windows drops trailing dots, so "internal." is "internal" there;
//   - holds no "/" or "\" (%2F, %5C): servers that decode before they split
//     would see new segments, and "\" separates them on Windows;
//   - holds no ";": servlet containers drop path parameters (section 3.3)
//     before resolving dot segments, so "..;x" counts as "..";
//   - holds no "%" (%25): a server that decodes twice would read %252e as a
//     dot and %252f as a slash;
//   - holds no control character (%00 ends a C string, CR and LF end a
//     header line) and no whitespace, which servers trim (so "internal%20"
//     is "internal" to some);
//   - outside ASCII, holds only valid UTF-8 letters, digits and combining
//     marks (after a letter or digit) and is unchanged by Unicode
//     normalization form NFKC: overlong encodings such as %C0%AE are not
//     UTF-8, and NFKC folds the compatibility spellings of "." and "/"
//     (U+FF0E, U+FF0F, U+2024, U+FE52...) and of letters (full-width
//     Latin, U+017F, U+212A) to ASCII; the other lookalikes of "." and "/"
//     (U+2215, U+2044, U+3002...) are punctuation or symbols.
func checkTail(escaped string) (string, error) {
	if escaped == "" {
		return "", nil
	}
	// Without escapes the decoded tail is the tail itself: nothing is
	// built.
	var b *strings.Builder
	if strings.Contains(escaped, "%") {
		b = &strings.Builder{}
		b.Grow(len(escaped))
	}
	rest := escaped[1:]
	for {
		seg, after, more := strings.Cut(rest, "/")
		if seg == "" && more {
			return "", errPathEmptySegment
		}
		dec, err := unescapeSegment(seg)
		if err != nil {
			return "", err
		}
		if err := checkSegment(dec, !more); err != nil {
			return "", err
		}
		if b != nil {
			b.WriteByte('/')
			b.WriteString(dec)
		}
		if !more {
			break
		}
		rest = after
	}
	if b == nil {
		return escaped, nil
	}
	return b.String(), nil
}

// unescapeSegment decodes the escapes of one canonical segment.
func unescapeSegment(seg string) (string, error) {
	if !strings.Contains(seg, "%") {
		return seg, nil
	}
	b := make([]byte, 0, len(seg))
	for i := 0; i < len(seg); i++ {
		if seg[i] != '%' {
			b = append(b, seg[i])
			continue
		}
		if i+2 >= len(seg) || !isHex(seg[i+1]) || !isHex(seg[i+2]) {
			return "", errPathEscape
		}
		b = append(b, unhex(seg[i+1])<<4|unhex(seg[i+2]))
		i += 2
	}
	return string(b), nil
}

// checkSegment checks one decoded segment; see checkTail. last allows the
// empty segment of a trailing slash.
func checkSegment(seg string, last bool) error {
	if seg == "" {
		if last {
			return nil
		}
		return errPathEmptySegment
	}
	ascii := true
	for i := 0; i < len(seg); i++ {
		switch c := seg[i]; {
		case c >= utf8.RuneSelf:
			ascii = false
		case c < 0x20 || c == 0x7f || c == ' ':
			return errPathControl
		case c == '/' || c == '\\':
			return errPathSeparator
		case c == ';':
			return errPathParameter
		case c == '%':
			return errPathDoubleEscape
		}
	}
	if !ascii {
		if err := checkNonASCII(seg); err != nil {
			return err
		}
	}
	if strings.HasSuffix(seg, ".") {
		return errPathDotSegment
	}
	return nil
}

// checkNonASCII checks a decoded segment that has bytes outside ASCII.
func checkNonASCII(seg string) error {
	if !utf8.ValidString(seg) || !norm.NFKC.IsNormalString(seg) {
		return errPathNonASCII
	}
	prevWord := false // the previous rune is a letter, digit or mark
	for _, r := range seg {
		switch {
		case r < utf8.RuneSelf:
			prevWord = 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9'
		case unicode.IsLetter(r) || unicode.IsNumber(r):
			prevWord = true
		case unicode.IsMark(r) && prevWord:
		default:
			// Punctuation, symbols, separators (Unicode whitespace), format
			// characters (bidirectional overrides, zero-width joiners) and
			// marks on nothing.
			return errPathNonASCII
		}
	}
	return nil
}

// foldSegment is a decoded segment as the most lenient server compares it:
// trailing dots dropped (Windows) and case folded the way both Unicode
// lowercasing and uppercasing comparisons meet, so that "INTERNAL", "ınternal"
// (dotless i, which uppercases to I) and "İnternal" all read "internal".
func foldSegment(seg string) string {
	seg = strings.TrimRight(seg, ".")
	return strings.Map(func(r rune) rune { return unicode.ToLower(unicode.ToUpper(r)) }, seg)
}

// foldedHasPrefix reports whether the decoded path, read by foldSegment,
// starts with the whole segments of prefix.
func foldedHasPrefix(pathSegs []string, prefix string) bool {
	prefixSegs := strings.Split(prefix[1:], "/")
	if len(prefixSegs) > len(pathSegs) {
		return false
	}
	for i, p := range prefixSegs {
		if foldSegment(pathSegs[i]) != foldSegment(p) {
			return false
		}
	}
	return true
}

// resolve finds the route of a request path (escaped, as the client sent
// it) and returns the canonical escaped tail after the route's prefix and
// the tail decoded. ok is false when no route matches; err, when one does,
// is the contract's invalid_request for a path an upstream could read as
// another path (see checkTail), or as the path of a longer route when case
// and trailing dots are ignored.
//
// bound, when set, is the route Echo's router chose: it is taken when the
// canonical path is its own, and every route is matched otherwise (a path
// that Echo saw in another spelling).
func (p *Proxy) resolve(escaped string, bound *Route) (route Route, tail, decoded string, ok bool, err error) {
	canonical, valid := canonicalPath(escaped)
	if !valid {
		// net/http refuses such a request line; a caller that builds its
		// own request gets the same answer as for any bad path.
		return Route{}, "", "", true, errPathEscape
	}
	if bound != nil {
		rest, found := strings.CutPrefix(canonical, bound.Prefix)
		if found && (rest == "" || rest[0] == '/') {
			route, tail, ok = *bound, rest, true
		}
	}
	if !ok {
		route, tail, ok = p.Match(canonical)
	}
	if !ok {
		return Route{}, "", "", false, nil
	}
	decoded, err = checkTail(tail)
	if err != nil {
		return Route{}, "", "", true, err
	}
	// A longer route that matches once case and trailing dots are ignored
	// is a carve-out an upstream comparing that way would give away:
	// /api/INTERNAL/x must not go to the /api upstream. Routes are sorted
	// longest first, so only those before route can be longer; the path is
	// split only when there is one, which the longest route never has.
	var segs []string
	for _, r := range p.routes {
		if len(r.Prefix) <= len(route.Prefix) {
			break
		}
		if segs == nil {
			segs = strings.Split(route.Prefix[1:]+decoded, "/")
		}
		if foldedHasPrefix(segs, r.Prefix) {
			return Route{}, "", "", true, errPathOtherRoute
		}
	}
	return route, tail, decoded, true, nil
}
