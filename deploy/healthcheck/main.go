// Command healthcheck probes the broker's admin listener from inside the
// broker's container, for Docker's HEALTHCHECK: the distroless image has no
// shell, curl or wget, and the broker itself has no probe subcommand.
//
//	healthcheck [PATH]
//
// It sends GET PATH (default /healthz) to the admin listener named by
// BROKER_ADMIN_LISTEN, the variable the broker reads too, and exits 0 on a
// 200 answer and 1 otherwise, saying why on stderr.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"
)

// defaultAdminListen is the contract's default of BROKER_ADMIN_LISTEN.
const defaultAdminListen = "127.0.0.1:9090"

func main() {
	path := "/healthz"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	target, err := adminURL(os.Getenv("BROKER_ADMIN_LISTEN"), path)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		err = probe(ctx, target)
		cancel()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "unhealthy:", err)
		os.Exit(1)
	}
}

// adminURL turns a listen address into a URL reachable from the same
// network namespace: an unspecified host (":9090", "0.0.0.0:9090",
// "[::]:9090") becomes the loopback address.
func adminURL(listen, path string) (string, error) {
	if listen == "" {
		listen = defaultAdminListen
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("BROKER_ADMIN_LISTEN: %w", err)
	}
	if addr, err := netip.ParseAddr(host); host == "" || (err == nil && addr.IsUnspecified()) {
		host = "127.0.0.1"
	}
	if !strings.HasPrefix(path, "/") {
		return "", errors.New("the path to probe must start with /")
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// probe succeeds when target answers 200.
func probe(ctx context.Context, target string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return nil
}
