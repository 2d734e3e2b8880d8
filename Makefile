# Hirte-rs: build, install and package.
# [impl->req~install.make-install~1]
#
#   make                       release build of hirte, hirte-agent (+ hirte-proxy), hirtectl, hirte-web
#   make install               install into $(DESTDIR)$(PREFIX) and $(DESTDIR)$(SYSCONFDIR)
#   make uninstall             remove what `make install` put there (keeps edited configs)
#   make deb                   Debian package via cargo-deb (target/debian/*.deb)
#   make rpm-sources           source and vendored-crates tarballs for packaging/rpm/hirte.spec
#   make rpm                   binary and source rpms from them (target/rpm/build/{RPMS,SRPMS})
#
# Variables (command line or environment):
#   DESTDIR        staging root, empty by default (packagers set it)
#   PREFIX         /usr
#   SYSCONFDIR     /etc        (the daemons read /etc/hirte or $HIRTE_CONFIG_DIR, whatever PREFIX is)
#   CARGO_PROFILE  release     (any cargo profile; `dev` installs target/debug)
#   BINSRC         where the binaries are taken from (default: the profile's target dir)
#   NO_BUILD=1     do not run cargo; install the binaries already in BINSRC
#
# Man pages and shell completions are generated with `hirtectl man DIR` and
# `hirtectl completions SHELL`; when the installed hirtectl does not have those
# commands yet, they are skipped with a message and everything else is installed.

PREFIX ?= /usr
SYSCONFDIR ?= /etc
DESTDIR ?=
CARGO ?= cargo
CARGO_PROFILE ?= release
TARGET_DIR ?= $(CURDIR)/target
PROFILE_DIR := $(if $(filter dev test,$(CARGO_PROFILE)),debug,$(if $(filter bench,$(CARGO_PROFILE)),release,$(CARGO_PROFILE)))
BINSRC ?= $(TARGET_DIR)/$(PROFILE_DIR)
GENDIR ?= $(TARGET_DIR)/generated

BINDIR ?= $(PREFIX)/bin
LIBEXECDIR ?= $(PREFIX)/libexec
UNITDIR ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DBUSPOLICYDIR ?= $(PREFIX)/share/dbus-1/system.d
MANDIR ?= $(PREFIX)/share/man
DOCDIR ?= $(PREFIX)/share/doc/hirte
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR ?= $(PREFIX)/share/fish/vendor_completions.d
CONFDIR ?= $(SYSCONFDIR)/hirte

BINARIES := hirte hirte-agent hirtectl hirte-web
# Run only by hirte-proxy@.service (cross-node dependencies), not by users.
LIBEXEC_BINARIES := hirte-proxy
SYSTEM_UNITS := packaging/systemd/hirte.service packaging/systemd/hirte.socket packaging/systemd/hirte-agent.service \
        packaging/systemd/hirte-proxy@.service packaging/systemd/hirte-dep@.service \
        packaging/systemd/hirte-web.service
USER_UNITS := packaging/systemd/user/hirte-agent.service \
        packaging/systemd/user/hirte-proxy@.service packaging/systemd/user/hirte-dep@.service
POLICIES := manager/dbus/org.containers.hirte.conf manager/dbus/org.containers.hirte.Agent.conf \
            manager/dbus/org.eclipse.bluechi.conf manager/dbus/org.eclipse.bluechi.Agent.conf
CONFIGS := packaging/config/hirte.conf packaging/config/agent.conf packaging/config/web.conf
SYSUSERS := packaging/sysusers.d/hirte.conf packaging/sysusers.d/hirte-web.conf
DOCS := docs/operations.md docs/stunnel.md README.md LICENSE
EXAMPLES := packaging/stunnel/hirte-server.conf packaging/stunnel/hirte-client.conf

INSTALL ?= install
INSTALL_PROGRAM ?= $(INSTALL) -m 0755
INSTALL_DATA ?= $(INSTALL) -m 0644

.PHONY: all build generate install install-bin install-data install-config install-generated \
        uninstall deb rpm-sources rpm architecture-svg clean-generated help

all: build

help:
	@sed -n '2,20p' $(firstword $(MAKEFILE_LIST)) | sed 's/^# \{0,1\}//'

build:
	$(CARGO) build --profile $(CARGO_PROFILE) -p hirte -p hirte-agent -p hirtectl -p hirte-web

# Man pages and completions from the built hirtectl, when it can make them.
# Layout of $(GENDIR)/share (also what cargo-deb packages): man/manN/*.N,
# bash-completion/completions/hirtectl, zsh/vendor-completions/_hirtectl,
# fish/vendor_completions.d/hirtectl.fish.
generate: $(if $(NO_BUILD),,build)
	@rm -rf $(GENDIR) && mkdir -p $(GENDIR)/raw-man $(GENDIR)/share/man \
	  $(GENDIR)/share/bash-completion/completions $(GENDIR)/share/zsh/vendor-completions \
	  $(GENDIR)/share/fish/vendor_completions.d
	@if $(BINSRC)/hirtectl man $(GENDIR)/raw-man >$(GENDIR)/man.log 2>&1; then \
	  for f in $(GENDIR)/raw-man/*.[1-9]; do \
	    [ -f "$$f" ] || continue; sec=$${f##*.}; \
	    mkdir -p $(GENDIR)/share/man/man$$sec && cp $$f $(GENDIR)/share/man/man$$sec/; \
	  done; \
	  echo "generated man pages: $$(cd $(GENDIR)/share/man && ls */ | tr '\n' ' ')"; \
	else \
	  echo "note: '$(BINSRC)/hirtectl man DIR' is not available ($$(head -n1 $(GENDIR)/man.log)); man pages skipped"; \
	fi
	@rm -rf $(GENDIR)/raw-man
	@mkdir -p $(GENDIR)/share/doc/hirte
	@for sh in bash zsh fish; do \
	  case $$sh in \
	    bash) out=$(GENDIR)/share/bash-completion/completions/hirtectl;; \
	    zsh) out=$(GENDIR)/share/zsh/vendor-completions/_hirtectl;; \
	    fish) out=$(GENDIR)/share/fish/vendor_completions.d/hirtectl.fish;; \
	  esac; \
	  if $(BINSRC)/hirtectl completions $$sh >$$out 2>$(GENDIR)/completions.log && [ -s $$out ]; then \
	    echo "generated $$sh completion"; \
	  else \
	    echo "note: '$(BINSRC)/hirtectl completions $$sh' is not available ($$(head -n1 $(GENDIR)/completions.log)); $$sh completion skipped"; \
	    rm -f $$out; \
	  fi; \
	done
	@{ echo "Generated by 'make generate' from $(BINSRC)/hirtectl:"; \
	  cd $(GENDIR)/share && find man bash-completion zsh fish -type f 2>/dev/null | sort; \
	} > $(GENDIR)/share/doc/hirte/generated.txt

install: install-bin install-data install-config install-generated
	@echo "installed into $(DESTDIR)$(PREFIX) and $(DESTDIR)$(CONFDIR)"

install-bin: $(if $(NO_BUILD),,build)
	@for b in $(BINARIES) $(LIBEXEC_BINARIES); do \
	  [ -x $(BINSRC)/$$b ] || { echo "error: $(BINSRC)/$$b is missing (run 'make' or set BINSRC)" >&2; exit 1; }; \
	done
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBEXECDIR)
	for b in $(BINARIES); do $(INSTALL_PROGRAM) $(BINSRC)/$$b $(DESTDIR)$(BINDIR)/$$b; done
	for b in $(LIBEXEC_BINARIES); do $(INSTALL_PROGRAM) $(BINSRC)/$$b $(DESTDIR)$(LIBEXECDIR)/$$b; done

# Units name /usr/bin and /usr/libexec; a different BINDIR or LIBEXECDIR is written
# into the installed copies.
install-data:
	$(INSTALL) -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(USERUNITDIR) $(DESTDIR)$(DBUSPOLICYDIR) \
	  $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(DOCDIR)/examples
	for u in $(SYSTEM_UNITS); do \
	  sed 's|/usr/bin/|$(BINDIR)/|g; s|/usr/libexec/|$(LIBEXECDIR)/|g' $$u > $(DESTDIR)$(UNITDIR)/$$(basename $$u) && \
	  chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u); \
	done
	for u in $(USER_UNITS); do \
	  sed 's|/usr/bin/|$(BINDIR)/|g; s|/usr/libexec/|$(LIBEXECDIR)/|g' $$u > $(DESTDIR)$(USERUNITDIR)/$$(basename $$u) && \
	  chmod 0644 $(DESTDIR)$(USERUNITDIR)/$$(basename $$u); \
	done
	for p in $(POLICIES); do $(INSTALL_DATA) $$p $(DESTDIR)$(DBUSPOLICYDIR)/; done
	for u in $(SYSUSERS); do $(INSTALL_DATA) $$u $(DESTDIR)$(SYSUSERSDIR)/; done
	for d in $(DOCS); do $(INSTALL_DATA) $$d $(DESTDIR)$(DOCDIR)/; done
	for e in $(EXAMPLES); do $(INSTALL_DATA) $$e $(DESTDIR)$(DOCDIR)/examples/; done

# Configuration files are never overwritten: an existing one is left alone and
# the shipped version is installed next to it as *.conf.dist.
install-config:
	$(INSTALL) -d -m 0755 $(DESTDIR)$(CONFDIR) $(DESTDIR)$(CONFDIR)/hirte.conf.d $(DESTDIR)$(CONFDIR)/agent.conf.d \
	  $(DESTDIR)$(CONFDIR)/web.conf.d
	@for c in $(CONFIGS); do \
	  dest=$(DESTDIR)$(CONFDIR)/$$(basename $$c); \
	  if [ -e $$dest ] && ! cmp -s $$c $$dest; then \
	    echo "keeping $$dest; the shipped version is $$dest.dist"; \
	    $(INSTALL_DATA) $$c $$dest.dist; \
	  else \
	    echo "$(INSTALL_DATA) $$c $$dest"; $(INSTALL_DATA) $$c $$dest; \
	  fi; \
	done

install-generated: generate
	$(INSTALL) -d $(DESTDIR)$(DOCDIR)
	$(INSTALL_DATA) $(GENDIR)/share/doc/hirte/generated.txt $(DESTDIR)$(DOCDIR)/generated.txt
	@for d in $(GENDIR)/share/man/man*; do \
	  [ -d "$$d" ] || continue; \
	  $(INSTALL) -d $(DESTDIR)$(MANDIR)/$$(basename $$d) && \
	  for f in $$d/*; do echo "install $$f"; $(INSTALL_DATA) $$f $(DESTDIR)$(MANDIR)/$$(basename $$d)/; done; \
	done
	@f=$(GENDIR)/share/bash-completion/completions/hirtectl; if [ -f $$f ]; then \
	  $(INSTALL) -d $(DESTDIR)$(BASHCOMPDIR) && $(INSTALL_DATA) $$f $(DESTDIR)$(BASHCOMPDIR)/hirtectl; fi
	@f=$(GENDIR)/share/zsh/vendor-completions/_hirtectl; if [ -f $$f ]; then \
	  $(INSTALL) -d $(DESTDIR)$(ZSHCOMPDIR) && $(INSTALL_DATA) $$f $(DESTDIR)$(ZSHCOMPDIR)/_hirtectl; fi
	@f=$(GENDIR)/share/fish/vendor_completions.d/hirtectl.fish; if [ -f $$f ]; then \
	  $(INSTALL) -d $(DESTDIR)$(FISHCOMPDIR) && $(INSTALL_DATA) $$f $(DESTDIR)$(FISHCOMPDIR)/hirtectl.fish; fi

# Removes the installed files; configuration files are removed only when
# unchanged from the shipped version, drop-in directories only when empty.
uninstall:
	for b in $(BINARIES); do rm -f $(DESTDIR)$(BINDIR)/$$b; done
	for b in $(LIBEXEC_BINARIES); do rm -f $(DESTDIR)$(LIBEXECDIR)/$$b; done
	for u in $(SYSTEM_UNITS); do rm -f $(DESTDIR)$(UNITDIR)/$$(basename $$u); done
	for u in $(USER_UNITS); do rm -f $(DESTDIR)$(USERUNITDIR)/$$(basename $$u); done
	for p in $(POLICIES); do rm -f $(DESTDIR)$(DBUSPOLICYDIR)/$$(basename $$p); done
	for u in $(SYSUSERS); do rm -f $(DESTDIR)$(SYSUSERSDIR)/$$(basename $$u); done
	rm -rf $(DESTDIR)$(DOCDIR)
	rm -f $(DESTDIR)$(MANDIR)/man1/hirte*.1 $(DESTDIR)$(MANDIR)/man5/hirte*.5 $(DESTDIR)$(MANDIR)/man8/hirte*.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/hirtectl $(DESTDIR)$(ZSHCOMPDIR)/_hirtectl $(DESTDIR)$(FISHCOMPDIR)/hirtectl.fish
	@for c in $(CONFIGS); do \
	  dest=$(DESTDIR)$(CONFDIR)/$$(basename $$c); \
	  rm -f $$dest.dist; \
	  if [ -e $$dest ] && ! cmp -s $$c $$dest; then echo "keeping edited $$dest"; else rm -f $$dest; fi; \
	done
	-rmdir $(DESTDIR)$(CONFDIR)/hirte.conf.d $(DESTDIR)$(CONFDIR)/agent.conf.d $(DESTDIR)$(CONFDIR)/web.conf.d \
	  $(DESTDIR)$(CONFDIR) 2>/dev/null || true

# Debian package: cargo-deb reads [package.metadata.deb] in manager/Cargo.toml.
# [impl->req~install.deb~1]
deb: build generate
	@command -v cargo-deb >/dev/null 2>&1 || { echo "error: cargo-deb is missing: cargo install cargo-deb --locked" >&2; exit 1; }
	$(CARGO) deb -p hirte --no-build --profile $(CARGO_PROFILE)
	@ls -1 $(TARGET_DIR)/debian/*.deb

# Sources of packaging/rpm/hirte.spec: Source0, the files git knows or would add
# (committed or not), without target/; Source1, `cargo vendor` of Cargo.lock, so that
# rpmbuild needs no network (mock, Koji, COPR). Both tarballs are reproducible (sorted,
# no owners, the last commit's time).
# [impl->req~install.rpm~1]
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
RPMDIR := $(TARGET_DIR)/rpm
SOURCE_TARBALL := $(RPMDIR)/hirte-$(VERSION).tar.gz
VENDOR_TARBALL := $(RPMDIR)/hirte-$(VERSION)-vendor.tar.xz
TAR_REPRODUCIBLE = --sort=name --owner=0 --group=0 --numeric-owner \
	--mtime=@$$(git log -1 --format=%ct 2>/dev/null || echo 0)
rpm-sources:
	mkdir -p $(RPMDIR)
	git ls-files -z --cached --others --exclude-standard | \
	  tar --null -T - $(TAR_REPRODUCIBLE) --transform 's|^|hirte-$(VERSION)/|' -cf - | gzip -9 -n > $(SOURCE_TARBALL)
	rm -rf $(RPMDIR)/vendor-tree && mkdir -p $(RPMDIR)/vendor-tree
	$(CARGO) vendor --locked --quiet $(RPMDIR)/vendor-tree/vendor >/dev/null
	tar -C $(RPMDIR)/vendor-tree $(TAR_REPRODUCIBLE) -cf - vendor | xz -T0 -6 > $(VENDOR_TARBALL)
	rm -rf $(RPMDIR)/vendor-tree
	@echo "$(SOURCE_TARBALL)"; echo "$(VENDOR_TARBALL)"
	@echo "(rpmbuild -ta --define \"_sourcedir $(RPMDIR)\" $(SOURCE_TARBALL), or 'make rpm')"

# Binary and source rpms in $(RPMDIR)/build. Where rpm lacks EL's macros (Debian's rpm:
# `rpm --eval %_unitdir` is empty) the spec gets packaging/rpm/macros.hirte-compat, and
# BuildRequires are not checked (nothing there is installed as an rpm). RPMBUILD_FLAGS
# adds options (e.g. --define "dist .el9_8"); RPMBUILD_WRAPPER runs rpmbuild through a
# command (ci/test: `unshare --net`, proving the build needs no network).
RPMBUILD ?= rpmbuild
RPMBUILD_WRAPPER ?=
RPM_COMPAT = $(if $(shell rpm --eval '%{?_unitdir}' 2>/dev/null),,--load $(CURDIR)/packaging/rpm/macros.hirte-compat --nodeps)
rpm: rpm-sources
	@command -v $(RPMBUILD) >/dev/null 2>&1 || { echo "error: $(RPMBUILD) is missing (dnf install rpm-build, apt install rpm)" >&2; exit 1; }
	rm -rf $(RPMDIR)/build
	$(RPMBUILD_WRAPPER) $(RPMBUILD) -ta --define "_topdir $(RPMDIR)/build" --define "_sourcedir $(RPMDIR)" \
	  $(RPM_COMPAT) $(RPMBUILD_FLAGS) $(SOURCE_TARBALL)
	@cd $(RPMDIR)/build && ls -1 RPMS/*/*.rpm SRPMS/*.rpm

# The architecture picture from its text source (needs Graphviz).
architecture-svg:
	dot -Tsvg docs/architecture.dot -o docs/architecture.svg

clean-generated:
	rm -rf $(GENDIR)
