# resplice — top-level build.  See README.md for the commands and
# ../shared/DESIGN.md (or the README's layout section) for what lives where.
#
#   make deps        install the Debian packages the build, tests and testbed need
#   make             build libresplice and the daemons (-Wall -Wextra -Werror)
#   make test        unit tests (ASan+UBSan), bounded fuzzing, integration tests
#                    (with a QUICK fault campaign on sanitized daemons, build/san)
#   make fuzz        fuzz each target for FUZZ_SECONDS (default 600) seconds
#   make emul-check  measure requested vs real RTT/loss for every link profile

CC       ?= gcc
CLANG    ?= clang
PYTHON   := /usr/bin/python3
BUILD    := build

WARN     := -Wall -Wextra -Werror
CFLAGS   ?= -O2 -g
CPPFLAGS += -D_GNU_SOURCE -Icore -MMD -MP
ALL_CFLAGS := -std=gnu11 $(WARN) $(CFLAGS)
SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all

# Libraries libresplice itself needs (HTTP parser, HMAC for control messages).
CORE_LIBS := -lhttp_parser -lsodium

CORE_SRC := $(wildcard core/*.c)
CORE_OBJ := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
CORE_ASAN_OBJ := $(CORE_SRC:%.c=$(BUILD)/asan/obj/%.o)
LIB      := $(BUILD)/libresplice.a
LIB_ASAN := $(BUILD)/asan/libresplice.a

UNIT_SRC := $(wildcard tests/unit/test_*.c)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=$(BUILD)/asan/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN := $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/fuzz/%)

# Daemons: folder NAME/ holds the sources of build/rs-NAME; NAME_LIBS are
# the extra libraries it links besides libresplice, NAME_SRC extra sources.
DAEMON_DIRS := app front client proxy logger stated auxlog ctl smtpd
DAEMONS  := $(foreach d,$(DAEMON_DIRS),$(if $(wildcard $(d)/*.c),$(d)))
# libstate/: the state library an application links to talk to rs-stated.
LIBSTATE_SRC := $(wildcard libstate/*.c) $(wildcard libstate/*.h)
app_SRC     := $(LIBSTATE_SRC)
front_SRC   := $(LIBSTATE_SRC)
front_LIBS  := -lsqlite3
app_LIBS    :=
client_LIBS :=
proxy_LIBS  := -lbpf -lelf -lz -lnl-genl-3 -lnl-3
proxy_CFLAGS := $(shell pkg-config --cflags libnl-genl-3.0)
proxy_DEPS  := $(BUILD)/splice.skel.h
logger_LIBS := -lpcap -lbpf -lelf -lz
logger_DEPS := $(BUILD)/capture.skel.h
logger_SRC  := common/tcfilter.c common/tcfilter.h
# rs-auxlog's tap loads rs-logger's capture program (--tap).
auxlog_LIBS := -lbpf -lelf -lz -lnetfilter_queue -lnfnetlink
auxlog_DEPS := $(BUILD)/capture.skel.h
auxlog_SRC  := common/tcfilter.c common/tcfilter.h
BINS := $(BUILD)/rs-emul $(DAEMONS:%=$(BUILD)/rs-%) $(BUILD)/rs-kv

.PHONY: kmod kmod-test bench-kmod bench-core bench-splice bench-auxlog bench-capture all deps test unit fuzz-smoke fuzz integration emul-check bench-emul bench-failover bench-scale bench-roundcube figures experiment-lan experiment-wan experiment-nospof regress regress-update san fault-campaign clean
all: $(LIB) $(BINS)

deps:
	@scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -c $< -o $@

$(BUILD)/asan/obj/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) -O1 $(SANITIZE) -c $< -o $@

$(LIB): $(CORE_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(LIB_ASAN): $(CORE_ASAN_OBJ)
	@mkdir -p $(@D)
	ar rcs $@ $^

$(BUILD)/asan/tests/%: tests/unit/%.c $(LIB_ASAN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iproxy $(ALL_CFLAGS) -O1 $(SANITIZE) $< -o $@ $(LIB_ASAN) -lcmocka $(CORE_LIBS) -lm

# The event loop's tests link the loop itself (common/, not libresplice).
$(BUILD)/asan/tests/test_loop: tests/unit/test_loop.c common/loop.c common/daemon.c $(LIB_ASAN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Icommon $(ALL_CFLAGS) -O1 $(SANITIZE) $< common/loop.c common/daemon.c -o $@ $(LIB_ASAN) \
		-lcmocka $(CORE_LIBS) -lm

# The control connections' tests link them and the loop (common/).
$(BUILD)/asan/tests/test_ctlconn: tests/unit/test_ctlconn.c common/ctlconn.c common/loop.c common/daemon.c $(LIB_ASAN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Icommon $(ALL_CFLAGS) -O1 $(SANITIZE) $< common/ctlconn.c common/loop.c common/daemon.c -o $@ \
		$(LIB_ASAN) -lcmocka $(CORE_LIBS) -lm

# rs-front's sqlite change sets (front/changes.c).
$(BUILD)/asan/tests/test_front_changes: tests/unit/test_front_changes.c front/changes.c $(LIB_ASAN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Ifront -Icommon -Ilibstate $(ALL_CFLAGS) -O1 $(SANITIZE) $< front/changes.c -o $@ $(LIB_ASAN) \
		-lcmocka -lsqlite3 $(CORE_LIBS) -lm

# The option parser's tests link it (common/).
$(BUILD)/asan/tests/test_options: tests/unit/test_options.c common/options.c common/daemon.c $(LIB_ASAN)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Icommon $(ALL_CFLAGS) -O1 $(SANITIZE) $< common/options.c common/daemon.c -o $@ $(LIB_ASAN) \
		-lcmocka $(CORE_LIBS) -lm

# libFuzzer targets compile the core sources in directly, with clang.
$(BUILD)/fuzz/%: tests/fuzz/%.c $(CORE_SRC) $(wildcard core/*.h) proxy/tcpsp.h proxy/splice_map.h
	@mkdir -p $(@D)
	$(CLANG) -D_GNU_SOURCE -Icore -Iproxy -std=gnu11 $(WARN) -O1 -g -fsanitize=fuzzer,address,undefined \
		-fno-sanitize-recover=all $< $(CORE_SRC) -o $@ $(CORE_LIBS) -lm

$(BUILD)/rs-emul: emul/rs-emul.c $(LIB)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< -o $@ $(LIB) -lnetfilter_queue -lnfnetlink -lm

# common/: plumbing every daemon shares (logging, addresses, key files);
# tcfilter.c (libbpf) only for the daemons that attach a tc program.
COMMON_SRC := $(filter-out common/tcfilter.c,$(wildcard common/*.c))

define daemon_rule
$(BUILD)/rs-$(1): $(wildcard $(1)/*.c) $(wildcard $(1)/*.h) $(COMMON_SRC) $(wildcard common/*.h) $($(1)_SRC) $(LIB) $($(1)_DEPS)
	@mkdir -p $$(@D)
	$$(CC) $$(CPPFLAGS) -I$(1) -Icommon -Ilibstate -I$(BUILD) $$(ALL_CFLAGS) $($(1)_CFLAGS) $(wildcard $(1)/*.c) $(COMMON_SRC) \
		$(filter %.c,$($(1)_SRC)) -o $$@ $$(LIB) $$($(1)_LIBS) $$(CORE_LIBS) -lm
endef
$(foreach d,$(DAEMONS),$(eval $(call daemon_rule,$(d))))

# libstate as the library a third-party application links (libstate/rs_state.h):
# the state library and the event loop and helpers it runs on; with
# libresplice, -lsodium -lhttp_parser.  rs-kv (libstate/example/) is built
# against it alone, as such an application would be.
LIBSTATE_OBJ := $(patsubst %.c,$(BUILD)/obj/%.o,$(wildcard libstate/*.c) common/loop.c common/daemon.c common/options.c \
                common/server.c)
$(LIBSTATE_OBJ): CPPFLAGS += -Icommon -Ilibstate
$(BUILD)/librs-state.a: $(LIBSTATE_OBJ)
	ar rcs $@ $^
$(BUILD)/rs-kv: libstate/example/kv.c $(BUILD)/librs-state.a $(LIB)
	$(CC) $(CPPFLAGS) -Ilibstate -Icommon $(ALL_CFLAGS) $< -o $@ $(BUILD)/librs-state.a $(LIB) $(CORE_LIBS) -lm

# The proxy's tc program: compiled for BPF, embedded in rs-proxy as a
# libbpf skeleton (no BTF of the running kernel needed).
BPF_CFLAGS := -target bpf -mcpu=v3 -O2 -g -Wall -Werror -Icore -Iproxy -I/usr/include/$(shell gcc -dumpmachine)
$(BUILD)/splice.bpf.o: proxy/bpf/splice.bpf.c $(wildcard proxy/bpf/*.h) proxy/splice_map.h core/splice.h core/splice-t.h core/seq.h
	@mkdir -p $(@D)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
$(BUILD)/splice.skel.h: $(BUILD)/splice.bpf.o
	bpftool gen skeleton $< name rs_splice > $@

# rs-logger's capture program (--capture ebpf), embedded the same way.
$(BUILD)/capture.bpf.o: logger/bpf/capture.bpf.c $(wildcard logger/bpf/*.h) core/capture.h core/seq.h
	@mkdir -p $(@D)
	$(CLANG) $(BPF_CFLAGS) -c $< -o $@
$(BUILD)/capture.skel.h: $(BUILD)/capture.bpf.o
	bpftool gen skeleton $< name lg_capture_bpf > $@

# The tc programs under BPF_PROG_TEST_RUN (need root): the proxy's compared
# with core/splice.h (run by tests/integration/test_splice.py), the
# logger's capture (tests/integration/test_capture.py).
$(BUILD)/tests/test_splice_prog: tests/bpf/test_splice_prog.c $(BUILD)/splice.skel.h $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -Iproxy -I$(BUILD) $(ALL_CFLAGS) $< -o $@ $(LIB) -lcmocka -lbpf -lelf -lz
$(BUILD)/tests/test_capture_prog: tests/bpf/test_capture_prog.c $(BUILD)/capture.skel.h $(LIB)
	@mkdir -p $(@D)
	$(CC) $(CPPFLAGS) -I$(BUILD) $(ALL_CFLAGS) $< -o $@ $(LIB) -lcmocka -lbpf -lelf -lz

unit: $(UNIT_BIN)
fuzz-smoke: $(FUZZ_BIN)
integration: all san $(BUILD)/tests/test_splice_prog $(BUILD)/tests/test_capture_prog $(BUILD)/bench_core

# Unit tests, FUZZ_SMOKE_SECONDS of fuzzing per target, then integration tests;
# the last line is "N passed, N failed, N skipped" (any skip fails the run).
test: all san unit fuzz-smoke kmod $(BUILD)/tests/test_splice_prog $(BUILD)/tests/test_capture_prog $(BUILD)/bench_core
	@$(PYTHON) tests/run.py --build $(BUILD) --fuzz-seconds $(or $(FUZZ_SMOKE_SECONDS),15)

fuzz: $(FUZZ_BIN)
	@$(PYTHON) tests/run.py --build $(BUILD) --only fuzz --fuzz-seconds $(or $(FUZZ_SECONDS),600)

emul-check: all
	@$(PYTHON) emul/emul_check.py --build $(BUILD) --out results/emul-check

bench-emul: all
	@$(PYTHON) emul/bench_emul.py --build $(BUILD)

# Normal-operation cost: direct, HAProxy (tcp, http), the splice alone and
# the whole stack, in one run (ROUNDS=, REQS=, DEPLOYMENTS=).
bench-splice: all
	@$(PYTHON) experiments/bench_splice.py --build $(BUILD)

# Reassembly + transactionalizing of one keep-alive connection with 5%
# reordered and 1% duplicated segments, against memcpy of the same bytes.
bench-core: $(BUILD)/bench_core
	@$(BUILD)/bench_core
$(BUILD)/bench_core: tests/bench/bench_core.c $(LIB)
	$(CC) $(CPPFLAGS) $(ALL_CFLAGS) $< -o $@ $(LIB) $(CORE_LIBS)

# Masked fraction, false failovers and the client's extra stall for a crash
# of the primary at a random moment (none/process/host/hang, with and
# without a CPU hog; TRIALS=, KINDS=, HOG=0|1|both).
bench-failover: all
	@$(PYTHON) experiments/bench_failover.py --build $(BUILD)

# N = 1, 10, 100, 1000 clients mid-download when the primary dies
# (SCALE_N=, FAULTS=process,host).
bench-scale: all
	@$(PYTHON) experiments/bench_scale.py --build $(BUILD)

# rs-auxlog's relay against the mail store directly and against the kernel
# forwarding on the auxlog host: a Roundcube-like IMAP conversation's time
# (ROUNDS=, CONVS=; see experiments/bench_auxlog.py).
bench-auxlog: all
	@$(PYTHON) experiments/bench_auxlog.py --build $(BUILD)

# rs-logger's capture, the tc program's ring (--capture ebpf) against
# libpcap in the same run: CPU per GB and whether it keeps 1 GB/s without
# drops (its own namespaces, not the testbed; BENCH_MB=, BENCH_P=, BENCH_ROUNDS=).
bench-capture: all
	@$(PYTHON) experiments/bench_capture.py --build $(BUILD)

# Roundcube direct vs through resplice, and failover at every crash point
# (TRIALS=, QUICK=1, MID=1: see experiments/bench_roundcube.py).
bench-roundcube: all
	@$(PYTHON) experiments/bench_roundcube.py --build $(BUILD)

# The LAN failover study: workloads (reference app, Roundcube) x techniques x
# actions x crash points (TRIALS=, QUICK=1, TECHNIQUES=, WORKLOADS=; see
# experiments/failover.py), the overhead
# without a crash (experiments/overhead.py), then the figures and
# results/REPORT.md.
experiment-lan: all
	@$(PYTHON) experiments/failover.py
	@$(PYTHON) experiments/overhead.py
	@$(PYTHON) experiments/figures.py
	@$(PYTHON) experiments/report.py --headline failover

# Failover-time regression: a short fixed failover study (resplice, both
# workloads, two crash points each, REGRESS_TRIALS= trials, default 15)
# compared with results/reference/regress/ (experiments/regress.py); exits 1
# with a table when failover got slower or masked less.  regress-update
# makes the run the new reference.
regress: all
	@$(PYTHON) experiments/regress.py

regress-update: all
	@$(PYTHON) experiments/regress.py --update

# Teaching labs (docs/labs/): lab-N runs one on the testbed and leaves its
# files in labs/run/lab-N/ (CLI=1: a Mininet CLI with the stack running);
# lab-N-check says whether that run and the student's answers show what
# the lab is about.
LAB_SCRIPTS := 1=splice 2=failover 3=replay 4=baselines 5=rerun
lab_script = $(if $(filter $(1)=%,$(LAB_SCRIPTS)),labs/$(patsubst $(1)=%,%,$(filter $(1)=%,$(LAB_SCRIPTS))).py,$(error no lab $(1): the labs are 1 to 5, docs/labs/))

lab-%-check:
	@$(PYTHON) $(call lab_script,$*) check

lab-%: all
	@$(PYTHON) $(call lab_script,$*) run

# The same over emulated WAN client links (PROFILES=, TRIALS=, QUICK=1).
experiment-nospof: all
	@$(PYTHON) experiments/nospof.py --build $(BUILD)

experiment-wan: all
	@$(PYTHON) experiments/failover.py --study wan
	@$(PYTHON) experiments/figures.py
	@$(PYTHON) experiments/report.py --headline wan

# The daemons built with AddressSanitizer and UndefinedBehaviorSanitizer
# (in build/san), for the fault campaign.
san:
	@$(MAKE) --no-print-directory BUILD=$(BUILD)/san CFLAGS="-O1 -g $(SANITIZE)" all

# Faults of every component at random moments, judged from outside
# (experiments/fault_campaign.py; TRIALS=, QUICK=1, FAULTS=, WORKLOADS=).
fault-campaign: san
	@$(PYTHON) experiments/fault_campaign.py --build $(BUILD)/san

# Redraws plots/ and results/REPORT.md from results/ (no run).
figures:
	@$(PYTHON) experiments/figures.py
	@$(PYTHON) experiments/report.py

# ---- kmod/: the seed's kernel data path, for Debian 12's kernel (issue 16) --------
# Built against linux-headers-amd64 (this machine's kernel loads no modules:
# the modules are tested in Debian's kernel booted under qemu, kmod/guest/).
KVER     ?= $(shell ls /lib/modules 2>/dev/null | grep -- '-amd64$$' | sort -V | tail -1)
KDIR     ?= /lib/modules/$(KVER)/build
# tcpspmod shares the splice arithmetic (core/) and the table's types and
# netlink protocol (proxy/) with rs-proxy and the tc program.
KMOD_SRC := kmod/Kbuild kmod/logmod.c kmod/logmod.h kmod/tcpspmod.c \
	core/splice.h core/splice-t.h core/seq.h proxy/splice_map.h proxy/tcpsp.h
KMODS    := rs_logmod rs_tcpspmod

kmod: $(KMODS:%=$(BUILD)/kmod/%.ko)

$(KMODS:%=$(BUILD)/kmod/%.ko) &: $(KMOD_SRC)
	@test -d "$(KDIR)" || { echo "make kmod: no kernel headers in '$(KDIR)' (make deps installs linux-headers-amd64)"; exit 1; }
	@mkdir -p $(BUILD)/kmod/src
	cp $(KMOD_SRC) $(BUILD)/kmod/src/
	$(MAKE) -s -C $(KDIR) M=$(abspath $(BUILD)/kmod/src) modules
	for m in $(KMODS); do cp $(BUILD)/kmod/src/$$m.ko $(BUILD)/kmod/; done

# Boots Debian's kernel in qemu (TCG) and runs the module tests in it (also
# part of make test: about 3 minutes, two boots).
kmod-test: kmod all
	@$(PYTHON) tests/run.py --build $(BUILD) --only kmod

# The kmod benchmark, inside the guest: the splice (direct vs the tc program
# vs tcpspmod), then the capture (rs-logger through logmod vs libpcap on
# the same download); each ends with summary:.
bench-kmod: kmod all
	@$(PYTHON) kmod/guest/run.py --timeout 1800 --mem 2048 -- $(PYTHON) kmod/tests/bench_splice.py
	@$(PYTHON) kmod/guest/run.py --timeout 900 -- $(PYTHON) kmod/tests/bench_capture.py

clean:
	rm -rf $(BUILD)

-include $(CORE_OBJ:.o=.d) $(CORE_ASAN_OBJ:.o=.d) $(LIBSTATE_OBJ:.o=.d)
-include $(BINS:=.d)
