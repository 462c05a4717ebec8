# syntax=docker/dockerfile:1
#
# The token broker as a small, non-root, shell-less image.
#
#   docker build -t mobile-token-broker/broker .
#   docker run --rm mobile-token-broker/broker migrate   # then: serve (the default)
#
# A release build names itself in the image's OCI labels:
#
#   docker build \
#     --build-arg VERSION=0.1.0 \
#     --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ) \
#     -t mobile-token-broker/broker:0.1.0 .
#
# The base images are named by tag; scripts/pin-base-images.sh resolves each
# to its current digest and rewrites the FROM lines as tag@sha256:..., so
# that a release build is reproducible and a re-pushed tag cannot change it.
#
# Configuration comes from BROKER_* environment variables only (see the
# README); the image sets the two listeners so that they are reachable from
# outside the container.

# Build on the build host's platform and cross-compile for the target one, so
# a multi-platform build (docker buildx --platform linux/amd64,linux/arm64)
# needs no emulation.
FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when go.mod or
# go.sum change, not on every source edit.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

COPY . .
# The production binary is built with the tag nodev: without the dev
# command, the development IdP (and its demo password) and the embedded
# Redis. `go run ./cmd/broker dev` from source keeps them. .git is not in
# the build context, so the toolchain stamps no revision: the version,
# revision and date that `broker version` prints are the build args the
# labels carry, set at link time.
ARG TARGETOS TARGETARCH
ARG VERSION=dev
ARG REVISION=""
ARG CREATED=""
RUN --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -tags nodev -trimpath \
      -ldflags="-s -w -X 'main.version=${VERSION}' -X 'main.revision=${REVISION}' -X 'main.buildDate=${CREATED}'" \
      -o /out/broker ./cmd/broker && \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -ldflags="-s -w" -o /out/healthcheck ./deploy/healthcheck

# Distroless static: CA certificates, tzdata and /etc/passwd, no shell, no
# package manager. The :nonroot tag runs as uid/gid 65532.
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=https://github.com/mobile-token-broker/broker
LABEL org.opencontainers.image.title="token broker" \
      org.opencontainers.image.description="Token broker for mobile apps: OIDC code+PKCE, encrypted sessions in Redis, a refreshing reverse proxy" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/broker /broker
COPY --from=build /out/healthcheck /healthcheck
USER nonroot:nonroot

# Inside a container the admin listener must not be bound to loopback (the
# contract's default), or neither probes nor a published port could reach
# it. The admin API still requires a BROKER_ADMIN_TOKENS bearer token; keep
# the port off public networks all the same.
ENV BROKER_LISTEN=:8080 \
    BROKER_ADMIN_LISTEN=:9090
# 8080: apps (public API and proxy); 9090: admin API, /healthz, /readyz, /metrics.
EXPOSE 8080 9090

# There is no shell or curl to probe with, and the broker has no probe
# subcommand, so a tiny static probe (deploy/healthcheck) asks the admin
# listener's /healthz (process alive). Orchestrators with HTTP probes
# (Kubernetes) should ignore this and probe GET :9090/healthz for liveness
# and GET :9090/readyz for readiness directly.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=3 \
    CMD ["/healthcheck", "/healthz"]

ENTRYPOINT ["/broker"]
CMD ["serve"]
