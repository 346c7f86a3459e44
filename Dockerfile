# The cubeflash image: the gateway (`cubeflash gateway`, what generated/gateway/deployment.yaml
# runs) and every other verb, on a distroless base as a non-root user.
#
#   make image                    # docker or podman build -t $(IMAGE) .
#
# No container engine runs on the development machines: this file is reviewed there, and
# built where docker or podman is installed.

# -- build: a release binary from the locked dependency set --------------------------------
FROM docker.io/library/rust:1.89-bookworm AS build
WORKDIR /src
# Dependencies first, so that editing src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && cargo build --release --locked --bin cubeflash 2>/dev/null || true
COPY src ./src
COPY templates ./templates
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin cubeflash \
 && strip target/release/cubeflash

# -- run: glibc + CA certificates, no shell, no package manager, uid 65532 ------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/cubeflash /usr/local/bin/cubeflash
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/cubeflash"]
CMD ["gateway", "--help"]
