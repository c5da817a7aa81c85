"""Your own application as a study workload: WORKLOADS=mine runs the
studies (make experiment-lan, the failover and overhead studies) on the
application a workload file describes, $MINE (default: the guestbook,
examples/guestbook/workload.ini; docs/your-application.md explains every
setting):

  [app]      command (run on each backend, serving HTTP/1.1 on {addr}:{port}),
             port, check_path, and optionally apply_file or apply_cmd (how a
             standby installs an X-Resplice-State blob), tags (rs-logger's
             transaction tags), strip_header (response headers that differ
             between backends; default Date)
  [actions]  name = rs-client trace
  [points]   name = action request offset; quick, headline, trials

Each backend runs the command behind rs-front (which numbers the requests,
takes the state hooks out of the responses and, on the primary, injects the
crash: --crash-at), as Roundcube runs behind it; a crash then SIGKILLs the
front and the application's processes together.  "direct" runs the command
alone on the primary, on the port the client uses.

load() reads a workload file into a Workload class; it raises BadWorkload,
naming the file and the setting, on anything it cannot use."""
import configparser
import os
import shlex
import shutil
import signal

from emul.places import ROOT, binary
from emul.stack import Stack, StackRun
from emul.testbed import wait_death, wait_listening
from roundcube.deploy import descendants

EXAMPLE = os.path.join(ROOT, "examples", "guestbook", "workload.ini")
# What a command may use; {dir} (the workload file's directory) is also
# allowed in every other path.
COMMAND_FIELDS = ("addr", "port", "data", "state_dir", "host", "dir")
APPLY_FIELDS = ("data", "dir")
START_TIMEOUT = 20          # s for the command to listen


class BadWorkload(ValueError):
    pass


def load(path, front_port, base):
    """The workload described by file 'path', as a subclass of 'base'
    (experiments/workloads.py's Workload) whose backends serve the client on
    'front_port'."""
    path = os.path.abspath(path)
    cp = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#",))
    try:
        if not cp.read(path):
            raise BadWorkload(f"{path}: cannot read it")
    except configparser.Error as e:
        raise BadWorkload(f"{path}: {e}") from None
    here = os.path.dirname(path)

    def bad(section, key, why):
        return BadWorkload(f"{path}: [{section}] {key}: {why}")

    def get(section, key, default=None):
        v = cp.get(section, key, fallback=default)
        if v is None:
            raise bad(section, key, "missing")
        return v.strip()

    def a_file(section, key, value):
        f = value.replace("{dir}", here)
        if not os.path.isfile(f):
            raise bad(section, key, f"no such file {f}")
        return f

    for section in ("app", "actions", "points"):
        if not cp.has_section(section):
            raise BadWorkload(f"{path}: no [{section}] section")
    def fields_ok(key, text, fields):
        try:
            text.format(**{k: "" for k in fields})
        except (ValueError, KeyError, IndexError) as e:
            raise bad("app", key, f"{e} (it may use {{{'}, {'.join(fields)}}})") from None

    try:
        argv = shlex.split(get("app", "command"))
    except ValueError as e:
        raise bad("app", "command", e) from None
    for word in argv:
        fields_ok("command", word, COMMAND_FIELDS)
    try:
        port = int(get("app", "port"))
    except ValueError:
        raise bad("app", "port", "not a number") from None
    if not 0 < port < 65536 or port == front_port:
        raise bad("app", "port", f"{port}: not a port other than the front's ({front_port})")
    apply_file, apply_cmd = get("app", "apply_file", ""), get("app", "apply_cmd", "")
    if apply_file and apply_cmd:
        raise bad("app", "apply_file", "and apply_cmd: one or the other")
    fields_ok("apply_file", apply_file, APPLY_FIELDS)
    fields_ok("apply_cmd", apply_cmd, APPLY_FIELDS)
    tags = get("app", "tags", "")
    actions = {name: a_file("actions", name, v) for name, v in cp.items("actions")}
    if not actions:
        raise BadWorkload(f"{path}: [actions] names no trace")

    points, special = {}, ("quick", "headline", "trials")
    for name, v in cp.items("points"):
        if name in special:
            continue
        words = v.split()
        if len(words) != 3:
            raise bad("points", name, f"{v!r}: want 'action request offset'")
        action, request, offset = words
        if action not in actions:
            raise bad("points", name, f"no action {action!r} (known: {', '.join(actions)})")
        try:
            request = request if request == "largest" else int(request)
            offset = offset if offset == "mid" else int(offset)
        except ValueError:
            raise bad("points", name, f"{v!r}: request is a number or 'largest', offset a number or 'mid'") from None
        points[name] = (action, request, offset)
    if not points:
        raise BadWorkload(f"{path}: [points] names no crash point")
    quick = tuple(get("points", "quick", " ".join(points)).split())
    headline = get("points", "headline", next(iter(points)))
    for key, names in (("quick", quick), ("headline", (headline,))):
        for n in names:
            if n not in points:
                raise bad("points", key, f"no crash point {n!r} (known: {', '.join(points)})")
    try:
        trials = int(get("points", "trials", "3"))
    except ValueError:
        raise bad("points", "trials", "not a number") from None

    app = App(path, here, argv, port, apply_file, apply_cmd, tags and a_file("app", "tags", tags),
              get("app", "strip_header", "").split())
    return type("Mine", (Deployments, base), {
        "name": "mine", "actions": actions, "points": points, "quick_points": quick, "headline": headline,
        "check_path": get("app", "check_path", "/"), "shared_store": True, "trials": trials, "app": app,
        "front_port": front_port, "__doc__": f"The application of {path}.",
    })


class Deployments:
    """What a workload does to deploy the application (the interface of
    experiments/workloads.py's workloads)."""

    def backends(self, hosts, shared_db=False, crash_host="primary"):
        return MineBackends(self.tb, self.dir, self.app, hosts, self.front_port, shared_db, crash_host)

    def resplice(self, crash_at):
        return MineResplice(self.tb, self.dir, self.app, crash_at)

    def direct(self):
        return MineDirect(self.tb, self.dir, self.app, self.front_port)


class App:
    """What a workload file says about running the application."""

    def __init__(self, path, here, argv, port, apply_file, apply_cmd, tags, strip_headers):
        self.path, self.here, self.argv, self.port = path, here, argv, port
        self.apply_file, self.apply_cmd, self.tags, self.strip_headers = apply_file, apply_cmd, tags, strip_headers

    @staticmethod
    def fresh_dir(run_dir, name):
        """An empty directory 'name' under 'run_dir'/mine (a new deployment
        starts from no data)."""
        d = os.path.join(os.path.abspath(run_dir), "mine", name)
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
        return d

    def dirs(self, run_dir, host):
        """(data, state_dir) of backend 'host', both empty."""
        return self.fresh_dir(run_dir, f"data-{host}"), self.fresh_dir(run_dir, f"state-{host}")

    def start(self, tb, host, name, addr, port, data, state_dir):
        """Runs the command on 'host' (a daemon named 'name'); waits until
        it listens on 'port'."""
        fields = {"addr": addr, "port": port, "data": data, "state_dir": state_dir, "host": host, "dir": self.here}
        d = tb.start(host, name, [w.format(**fields) for w in self.argv])
        if not wait_listening(tb[host], port, START_TIMEOUT) or not d.alive():
            raise RuntimeError(f"{self.path}: the command did not listen on {addr}:{port} on {host} within "
                               f"{START_TIMEOUT} s; see {d.err} and {d.out}")
        return d

    def front_args(self, data, state_dir):
        """rs-front's options for this application."""
        fields = {"data": data, "dir": self.here}
        argv = ["--state-dir", state_dir]
        if self.apply_file:
            argv += ["--apply-file", self.apply_file.format(**fields)]
        if self.apply_cmd:
            argv += ["--apply-cmd", self.apply_cmd.format(**fields)]
        for h in self.strip_headers:
            argv += ["--strip-header", h]
        return argv


def crash_app(tb, d):
    """SIGKILLs the application's daemon 'd' and every process it started."""
    for pid in [d.pid] + descendants(d.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    d.popen.wait()


class MineBackends:
    """The application behind rs-front on 'hosts', the crash host's front
    with --crash-at; 'shared_db': one data directory for all of them."""

    def __init__(self, tb, run_dir, app, hosts, front_port, shared_db=False, crash_host="primary"):
        self.tb, self.dir, self.app, self.hosts, self.front_port = tb, run_dir, app, hosts, front_port
        self.shared, self.crash_host = shared_db, crash_host
        self.apps, self.fronts = {}, {}

    def start(self, crash_at):
        shared = self.app.fresh_dir(self.dir, "data-shared") if self.shared else None
        for h in self.hosts:
            data, state = self.app.dirs(self.dir, h)
            data = shared or data
            self.apps[h] = self.app.start(self.tb, h, f"mine-{h}", "127.0.0.1", self.app.port, data, state)
            argv = [binary("rs-front"), "--listen", f"0.0.0.0:{self.front_port}", "--id", h,
                    "--upstream", f"127.0.0.1:{self.app.port}"] + self.app.front_args(data, state)
            if crash_at and h == self.crash_host:
                argv += ["--crash-at", str(crash_at)]
            self.fronts[h] = self.tb.start(h, f"front-{h}", argv, ready="listening")

    def addr(self, host):
        return f"{self.tb[host].IP()}:{self.front_port}"

    def crash(self, timeout=60):
        t = wait_death(self.fronts[self.crash_host], timeout)
        if t is not None:
            crash_app(self.tb, self.apps[self.crash_host])
        return t

    def stop(self):
        ds = [d for d in list(self.fronts.values()) + list(self.apps.values()) if d.alive()]
        self.tb.stop(*ds)
        self.fronts.clear()
        self.apps.clear()


class MineResplice(StackRun):
    """The application behind rs-front on both backends with the whole
    stack (emul/stack.py); the primary's front dies at 'crash_at' and
    crash() kills the application there too."""

    def __init__(self, tb, run_dir, app, crash_at):
        self.tb, self.dir, self.app, self.crash_at = tb, run_dir, app, crash_at
        self.apps, self.paths = {}, {}
        super().__init__(Stack(tb, run_dir, front={"start": self._start_app, "port": app.port,
                                                   "args": self._front_args},
                               logger_args=["--tags", app.tags] if app.tags else []))

    def _start_app(self, host):
        self.paths[host] = self.app.dirs(self.dir, host)
        self.apps[host] = self.app.start(self.tb, host, f"mine-{host}", "127.0.0.1", self.app.port,
                                         *self.paths[host])

    def _front_args(self, host):
        argv = self.app.front_args(*self.paths[host])
        return argv + (["--crash-at", str(self.crash_at)] if self.crash_at and host == "primary" else [])

    def crash(self, timeout=60):
        t = super().crash(timeout)
        if t is not None:
            crash_app(self.tb, self.apps["primary"])
        return t

    def stop(self):
        super().stop()
        self.tb.stop(*[d for d in self.apps.values() if d.alive()])
        self.apps.clear()


class MineDirect:
    """The application alone on the primary, serving the client itself."""

    def __init__(self, tb, run_dir, app, front_port):
        self.tb, self.dir, self.app, self.port = tb, run_dir, app, front_port

    def start(self):
        data = self.app.fresh_dir(self.dir, "data-primary")
        self.d = self.app.start(self.tb, "primary", "mine-primary", "0.0.0.0", self.port, data, "")
        self.addr = f"{self.tb['primary'].IP()}:{self.port}"
        return self

    def stop(self):
        if self.d.alive():
            self.tb.stop(self.d)
