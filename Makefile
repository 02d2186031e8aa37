# ketch: the two set-up commands are `make run` and `make test` (as root).

PREFIX ?= /usr/local
CNI_CONF_DIR ?= /etc/cni/net.d
CARGO ?= cargo
TEST_THREADS ?= 4

.PHONY: all build release run install test unit e2e bench lint fmt clippy deps-run deps-test clean

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release --locked

deps-run:
	./deploy/install-deps.sh run

deps-test:
	./deploy/install-deps.sh test

# Starts ketch in the foreground with the defaults: socket /run/ketch/ketch.sock,
# state in /var/lib/ketch and /run/ketch, CNI from /etc/cni/net.d (a private
# bridge network is installed there when the directory has no config).
run: deps-run release
	@mkdir -p $(CNI_CONF_DIR)
	@if ! ls $(CNI_CONF_DIR)/*.conf $(CNI_CONF_DIR)/*.conflist $(CNI_CONF_DIR)/*.json >/dev/null 2>&1; then \
		echo "installing deploy/cni/10-ketch-bridge.conflist into $(CNI_CONF_DIR)"; \
		install -m 0644 deploy/cni/10-ketch-bridge.conflist $(CNI_CONF_DIR)/; \
	fi
	exec ./target/release/ketch serve --cni-conf-dir $(CNI_CONF_DIR)

# Installs the binaries, the config, the systemd unit and crictl's config.
install: release
	install -D -m 0755 target/release/ketch $(PREFIX)/bin/ketch
	install -D -m 0755 target/release/ketch-shim $(PREFIX)/bin/ketch-shim
	install -D -m 0644 deploy/ketch.service /etc/systemd/system/ketch.service
	@[ -e /etc/ketch/ketch.toml ] || install -D -m 0644 deploy/ketch.toml /etc/ketch/ketch.toml
	@[ -e /etc/crictl.yaml ] || install -D -m 0644 deploy/crictl.yaml /etc/crictl.yaml

# The whole test suite: unit tests and the end-to-end tests (root).
test: deps-test
	$(CARGO) test --locked -- --test-threads=$(TEST_THREADS)

# Runs as any user: a test that needs root says "skipped: needs root (...)"
# on stderr (see it with `-- --nocapture`) and passes without running.
unit:
	$(CARGO) test --locked --lib --bins

e2e: deps-test
	$(CARGO) test --locked --test e2e -- --test-threads=$(TEST_THREADS)

# ketch against containerd, call for call (root; installs containerd and runc
# from Debian when missing); RUNTIMES="ketch ketch-runc" compares the built-in
# executor with the runc runtime handler. See benches/run.sh for the settings.
bench:
	./benches/run.sh

lint: fmt clippy

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

clean:
	$(CARGO) clean
