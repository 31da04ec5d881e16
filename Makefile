# husk: see README.md. `make demo` sets up a fresh Debian 12 machine and runs a
# container in a micro-VM; `make test` runs the whole test suite.
GO ?= go
PREFIX ?= /usr/local
DESTDIR ?=
BUILD := build
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/husk-runtime/husk/internal/version.Version=$(VERSION)
GOFILES := $(shell find . -name '*.go' -not -path './build/*') go.mod go.sum

.PHONY: all deps binaries guest demo test unit fuzz bench protos lint install uninstall clean

all: binaries guest

deps:
	./scripts/install-deps.sh

binaries: $(BUILD)/husk $(BUILD)/husk-agent

$(BUILD)/husk: $(GOFILES)
	$(GO) build -trimpath -ldflags '$(LDFLAGS) -s -w' -o $@ ./cmd/husk

# The agent is the guest's /init: static, with libcontainer's C parts (nsenter)
# and libseccomp linked in.
$(BUILD)/husk-agent: $(GOFILES)
	CGO_ENABLED=1 $(GO) build -trimpath -tags 'seccomp netgo osusergo' \
		-ldflags '$(LDFLAGS) -s -w -extldflags -static' -o $@ ./cmd/husk-agent

$(BUILD)/husk-mkinitrd: $(GOFILES)
	$(GO) build -trimpath -o $@ ./cmd/husk-mkinitrd

$(BUILD)/husk-initrd.img: $(BUILD)/husk-agent $(BUILD)/husk-mkinitrd
	$(BUILD)/husk-mkinitrd -agent $(BUILD)/husk-agent -o $@

$(BUILD)/vmlinux: guest/kernel/husk.config scripts/build-kernel.sh
	./scripts/build-kernel.sh $@

guest: $(BUILD)/vmlinux $(BUILD)/husk-initrd.img

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
	staticcheck ./...

install: all
	install -D -m 0755 $(BUILD)/husk $(DESTDIR)$(PREFIX)/bin/husk
	install -D -m 0644 $(BUILD)/vmlinux $(DESTDIR)$(PREFIX)/share/husk/vmlinux
	install -D -m 0644 $(BUILD)/husk-initrd.img $(DESTDIR)$(PREFIX)/share/husk/husk-initrd.img

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/husk $(DESTDIR)$(PREFIX)/share/husk/vmlinux $(DESTDIR)$(PREFIX)/share/husk/husk-initrd.img
	-rmdir $(DESTDIR)$(PREFIX)/share/husk

clean:
	rm -rf $(BUILD)
