# husk: see README.md. `make demo` sets up a fresh Debian 12 machine and runs a
# container in a micro-VM; `make test` runs the whole test suite.
GO ?= go
PREFIX ?= /usr/local
DESTDIR ?=
BUILD := build
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/husk-runtime/husk/internal/version.Version=$(VERSION)
GOFILES := $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum

.PHONY: all deps binaries guest docs diagram demo test unit fuzz bench protos lint install uninstall deb clean

all: binaries guest

deps:
	./scripts/install-deps.sh

binaries: $(BUILD)/husk $(BUILD)/husk-agent $(BUILD)/containerd-shim-husk-v2

$(BUILD)/husk: $(GOFILES)
	$(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o $@ ./cmd/husk

# containerd finds it by name on its PATH for the runtime io.containerd.husk.v2.
$(BUILD)/containerd-shim-husk-v2: $(GOFILES)
	$(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o $@ ./cmd/containerd-shim-husk-v2

# The agent is the guest's /init: static, with libcontainer's C parts (nsenter)
# and libseccomp linked in.
$(BUILD)/husk-agent: $(GOFILES)
	CGO_ENABLED=1 $(GO) build -trimpath -tags 'seccomp netgo osusergo' \
		-ldflags '$(LDFLAGS) -s -w -extldflags -static' -o $@ ./cmd/husk-agent

$(BUILD)/husk-mkinitrd: $(GOFILES)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $@ ./cmd/husk-mkinitrd

$(BUILD)/husk-initrd.img: $(BUILD)/husk-agent $(BUILD)/husk-mkinitrd
	$(BUILD)/husk-mkinitrd -agent $(BUILD)/husk-agent -o $@

$(BUILD)/vmlinux: guest/kernel/husk.config scripts/build-kernel.sh
	./scripts/build-kernel.sh $@

guest: $(BUILD)/vmlinux $(BUILD)/husk-initrd.img

# The architecture picture, rendered from its source (apt-get install graphviz).
diagram: docs/architecture.png
docs/architecture.png: docs/architecture.dot
	dot -Tpng -Gdpi=110 -o $@ $<

# Man pages and bash completion, generated from the command definitions.
docs: $(GOFILES)
	$(GO) run ./cmd/husk-gendocs -o $(BUILD)/docs

# A busybox bundle, as a user would make one: rootfs from busybox-static,
# config.json from `husk spec`.
$(BUILD)/bundle/config.json: $(BUILD)/husk
	./scripts/make-bundle.sh $(BUILD)/bundle

demo: deps all $(BUILD)/bundle/config.json
	./scripts/demo.sh

test: all
	./scripts/test.sh

unit:
	$(GO) test ./...

fuzz:
	FUZZTIME=$${FUZZTIME:-5m} ./scripts/fuzz.sh

bench: all $(BUILD)/bundle/config.json
	./scripts/bench.sh

protos:
	protoc --proto_path=api --go_out=. --go_opt=module=github.com/husk-runtime/husk \
		--go-ttrpc_out=. --go-ttrpc_opt=module=github.com/husk-runtime/husk \
		api/agent/v1/agent.proto

lint:
	test -z "$$(gofmt -l $$(git ls-files '*.go'))"
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

SYSCONFDIR ?= /etc

install: all docs
	install -D -m 0755 $(BUILD)/husk $(DESTDIR)$(PREFIX)/bin/husk
	install -D -m 0755 $(BUILD)/containerd-shim-husk-v2 $(DESTDIR)$(PREFIX)/bin/containerd-shim-husk-v2
	install -D -m 0644 $(BUILD)/vmlinux $(DESTDIR)$(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(BUILD)/husk-initrd.img $(DESTDIR)$(PREFIX)/share/husk/husk-initrd.img
	install -d $(DESTDIR)$(PREFIX)/share/man/man8
	install -m 0644 $(BUILD)/docs/man/*.8 $(DESTDIR)$(PREFIX)/share/man/man8/
	install -D -m 0644 $(BUILD)/docs/husk.bash $(DESTDIR)$(PREFIX)/share/bash-completion/completions/husk
	# A configuration the administrator edited is never overwritten.
	test -e $(DESTDIR)$(SYSCONFDIR)/husk/configuration.toml || \
		install -D -m 0644 config/configuration.toml $(DESTDIR)$(SYSCONFDIR)/husk/configuration.toml

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/husk $(DESTDIR)$(PREFIX)/bin/containerd-shim-husk-v2 $(DESTDIR)$(PREFIX)/share/husk/vmlinux $(DESTDIR)$(PREFIX)/share/husk/husk-initrd.img
	rm -f $(DESTDIR)$(PREFIX)/share/man/man8/husk.8 $(DESTDIR)$(PREFIX)/share/man/man8/husk-*.8
	rm -f $(DESTDIR)$(PREFIX)/share/bash-completion/completions/husk
	-rmdir $(DESTDIR)$(PREFIX)/share/husk
	# The guests saved as templates (hypervisor.template_dir's default).
	rm -rf $(DESTDIR)/run/husk-templates
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/husk/configuration.toml"

# A Debian package of the same files, under /usr.
deb: all docs
	rm -rf $(BUILD)/deb
	$(MAKE) install DESTDIR=$(CURDIR)/$(BUILD)/deb PREFIX=/usr
	install -d $(BUILD)/deb/DEBIAN
	printf 'Package: husk\nVersion: 0.1.0+%s\nArchitecture: amd64\nMaintainer: husk developers\nDepends: qemu-system-x86, util-linux\nDescription: OCI runtime that runs each container in its own lightweight VM\n husk takes runc'"'"'s command line and bundles and runs the workload under\n its own guest kernel in a QEMU micro-VM.\n' \
		"$$(echo $(VERSION) | tr -c 'a-zA-Z0-9.+~\n' '+')" > $(BUILD)/deb/DEBIAN/control
	echo /etc/husk/configuration.toml > $(BUILD)/deb/DEBIAN/conffiles
	dpkg-deb --root-owner-group --build $(BUILD)/deb $(BUILD)/husk.deb

clean:
	rm -rf $(BUILD)
