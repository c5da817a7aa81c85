"""Roundcube webmail, dovecot IMAP and rs-smtpd on the testbed's Mininet hosts
(the paper's workload, seed §6).  Everything a host runs lives under the run
directory (Mininet hosts share one file system), is started with tb.start
and so is stopped by the Testbed:

    with Testbed(LanTopo(), run_dir) as tb:
        ms = MailStore(tb, run_dir).start()                 # host "mailstore"
        rc = Roundcube(tb, run_dir, "primary").start()      # http://10.0.0.11:8080/
        ...
        count_messages(run_dir, "bob", "INBOX")

Run-directory layout:
    mailstore/   dovecot.conf, passwd, dovecot base_dir, home/<user>/Maildir
    rc-<host>/   config/ (ROUNDCUBE_CONFIG_DIR), roundcube.db, lighttpd.conf,
                 php.sock, logs/, temp/

The primary and the alternate each get their own database, with the same
des_key and session_lifetime, so a state transfer (a copy of rows) is all
the alternate needs to serve the primary's sessions.

Behind resplice (ResplicedRoundcube): lighttpd listens on the backend's
loopback (8081), rs-front on 8080 numbers the requests, the
resplice plugin (plugins/resplice) snapshots the database after each PHP
request and names the transaction in its IMAP and SMTP conversations, and
both backends reach the mail store through rs-auxlog on host "auxlog"."""
import os
import pwd
import re
import signal
import sqlite3
import time

from emul.places import APP_PORT, ROOT, UPSTREAM_PORT, binary
from topologies.lan import SERVERS

RC_INSTALL = "/var/lib/roundcube"       # Roundcube's INSTALL_PATH
HTDOCS = os.path.join(RC_INSTALL, "public_html")
RC_ETC = "/etc/roundcube"
RC_SCHEMA = "/usr/share/roundcube/SQL/sqlite.initial.sql"
PHP_CGI = "/usr/bin/php-cgi"
LIGHTTPD = "/usr/sbin/lighttpd"
DOVECOT = "/usr/sbin/dovecot"

MAILSTORE_IP = SERVERS["mailstore"]
AUXLOG_IP = SERVERS["auxlog"]
# How rs-auxlog records the backends' first runs: "tap" (forwarded by its
# host, recorded on the way: rs-auxlog --tap) or "relay" (through it).
AUXLOG_TAP = os.environ.get("RS_AUXLOG", "tap") == "tap"
IMAP_PORT, SMTP_PORT = 143, 25
HTTP_PORT = APP_PORT            # Roundcube alone, or the front before it (lighttpd then on UPSTREAM_PORT)
PLUGIN_SRC = os.path.join(ROOT, "roundcube", "plugins", "resplice")
PLUGIN_DIR = os.path.join(RC_INSTALL, "plugins", "resplice")
TAGS = os.path.join(ROOT, "roundcube", "tags.conf")
MAIL_DOMAIN = "resplice.test"
USERS = {"alice": "alice-secret", "bob": "bob-secret"}
FOLDERS = ("Drafts", "Sent", "Junk", "Trash")
# Shared by every backend: Roundcube encrypts the IMAP password in the
# session with it, so the alternate can only use a copied session if the
# key is the same.  24 bytes (3DES).
DES_KEY = "resplice-rc-des-key-24b!"
SESSION_LIFETIME_MIN = 60
PHP_CHILDREN = 4
# The mail user: dovecot refuses UID 0 for mail access.
MAIL_USER = "mail"


class DeployError(RuntimeError):
    pass


def _wait(cond, timeout, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return cond()


def _listening(host, port):
    out = host.cmd(f"ss -Hltn 'sport = :{port}'")
    return f":{port}" in out


def _traversable(path):
    """chmods 'path' a+x (dovecot's mail and login processes are not root),
    and fails when a parent is closed to others."""
    path = os.path.abspath(path)
    os.chmod(path, os.stat(path).st_mode | 0o711)
    p = os.path.dirname(path)
    while p != "/":
        if not os.stat(p).st_mode & 0o001:
            raise DeployError(f"{p} is not traversable by others (chmod o+x it): "
                              "dovecot's mail processes cannot reach the run directory")
        p = os.path.dirname(p)


def _write(path, text, mode=0o644):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


# ---- mail store: dovecot + rs-smtpd -----------------------------------------

class MailStore:
    """dovecot (IMAP on 'imap_port', default 143, passwd-file users, Maildir)
    and rs-smtpd (SMTP on 25, delivering into the same Maildirs) on 'host'.
    Without a testbed ('tb' None) only config() is of use: it writes the one
    dovecot configuration, which a loopback test runs itself on 'listen'."""

    def __init__(self, tb, run_dir, host="mailstore", users=None, imap_port=IMAP_PORT, listen="*"):
        self.tb, self.host_name = tb, host
        self.imap_port, self.listen = imap_port, listen
        self.dir = os.path.abspath(os.path.join(run_dir, "mailstore"))
        self.home = os.path.join(self.dir, "home")
        self.users = dict(users or USERS)
        self.d = {}

    @property
    def ip(self):
        return self.tb[self.host_name].IP()

    def _maildirs(self, uid, gid):
        os.makedirs(self.home, exist_ok=True)
        for user in self.users:
            base = os.path.join(self.home, user)
            # INBOX plus the special folders Roundcube expects (Maildir++:
            # .Sent etc.), subscribed, so login creates nothing on IMAP.
            for folder in ("",) + tuple("." + f for f in FOLDERS):
                for sub in ("cur", "new", "tmp"):
                    os.makedirs(os.path.join(base, "Maildir", folder, sub), exist_ok=True)
            _write(os.path.join(base, "Maildir", "subscriptions"), "".join(f + "\n" for f in FOLDERS))
            for root, dirs, files in os.walk(base):
                for n in dirs + files:
                    os.chown(os.path.join(root, n), uid, gid)
            os.chown(base, uid, gid)

    def config(self):
        pw = pwd.getpwnam(MAIL_USER)
        self._maildirs(pw.pw_uid, pw.pw_gid)
        passwd = os.path.join(self.dir, "passwd")
        _write(passwd, "".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()), 0o644)
        base = os.path.join(self.dir, "run")
        os.makedirs(base, exist_ok=True)
        conf = os.path.join(self.dir, "dovecot.conf")
        _write(conf, f"""# generated by roundcube/deploy.py
base_dir = {base}
state_dir = {os.path.join(self.dir, 'state')}
protocols = imap
listen = {self.listen}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
log_path = /dev/stderr
info_log_path = /dev/stderr
log_timestamp = "%Y-%m-%d %H:%M:%S "
mail_location = maildir:~/Maildir
mail_fsync = never
# Every backend's Roundcube and rs-auxlog's relays reach dovecot from
# few addresses, one connection per HTTP request: several users of one
# account at once (the campaign's roundcube-action2x4), with re-runs and
# connections a killed backend left open, passed dovecot's default of 10
# and a login failed.
protocol imap {{
  mail_max_userip_connections = 100
}}
first_valid_uid = {pw.pw_uid}
last_valid_uid = {pw.pw_uid}
mail_privileged_group =
imap_id_log = *
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {passwd}
}}
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={pw.pw_gid} home={self.home}/%n
}}
service imap-login {{
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
  # one login process per connection is dovecot's safe default; Roundcube
  # opens one IMAP connection per HTTP request, so keep processes around.
  service_count = 0
  process_min_avail = 2
}}
service imap {{
  process_min_avail = 2
}}
""")
        os.makedirs(os.path.join(self.dir, "state"), exist_ok=True)
        return conf

    def start(self, timeout=15):
        os.makedirs(self.dir, exist_ok=True)
        _traversable(os.path.dirname(self.dir))
        _traversable(self.dir)
        conf = self.config()
        h = self.tb[self.host_name]
        self.d["dovecot"] = self.tb.start(h, "dovecot", [DOVECOT, "-F", "-c", conf])
        self.d["smtpd"] = self.tb.start(h, "smtpd", [
            binary("rs-smtpd"), "--listen", f"0.0.0.0:{SMTP_PORT}", "--maildirs", self.home,
            "--hostname", MAIL_DOMAIN], ready="listening")
        if not _wait(lambda: _listening(h, self.imap_port) or not self.d["dovecot"].alive(), timeout):
            raise DeployError(f"dovecot not listening on {self.imap_port}; see {self.d['dovecot'].err}")
        if not self.d["dovecot"].alive():
            raise DeployError(f"dovecot exited; see {self.d['dovecot'].err}")
        return self

    def pids(self):
        """Every process of the mail store: dovecot and its children, rs-smtpd."""
        roots = [d.pid for d in self.d.values() if d.alive()]
        return roots + [p for r in roots for p in descendants(r)]

    def stop(self):
        for d in self.d.values():
            self.tb.stop(d)


def count_messages(run_dir, user, folder="INBOX"):
    """Messages in 'user's 'folder' (INBOX, Sent, ...): files in the
    Maildir's new/ and cur/."""
    md = os.path.join(os.path.abspath(run_dir), "mailstore", "home", user, "Maildir")
    if folder != "INBOX":
        md = os.path.join(md, "." + folder)
    return sum(len(os.listdir(os.path.join(md, sub))) for sub in ("new", "cur")
               if os.path.isdir(os.path.join(md, sub)))


# ---- Roundcube backend: lighttpd + php-cgi ----------------------------------

def _php_str(s):
    return "'" + str(s).replace("\\", "\\\\").replace("'", "\\'") + "'"


class Roundcube:
    """Roundcube under lighttpd (port 8080) and php-cgi (FastCGI on a unix
    socket) on 'host', with its own config dir and sqlite database."""

    def __init__(self, tb, run_dir, host, mailstore_ip=MAILSTORE_IP, port=HTTP_PORT,
                 php_children=PHP_CHILDREN, extra_config=None, bind="0.0.0.0", plugin=False):
        """'plugin': load the resplice plugin (the state goes to state_dir),
        for a front on the same host ('bind' 127.0.0.1, 'port' UPSTREAM_PORT)."""
        self.tb, self.host_name, self.port, self.bind, self.plugin = tb, host, port, bind, plugin
        self.dir = os.path.abspath(os.path.join(run_dir, f"rc-{host}"))
        self.state_dir = os.path.join(self.dir, "state")
        self.conf_dir = os.path.join(self.dir, "config")
        self.db = os.path.join(self.dir, "roundcube.db")
        self.sock = os.path.join(self.dir, "php.sock")
        self.mailstore_ip, self.php_children = mailstore_ip, php_children
        self.extra_config = dict(extra_config or {})
        self.d = {}

    @property
    def ip(self):
        return self.tb[self.host_name].IP()

    @property
    def addr(self):
        return f"{self.ip}:{self.port}"

    def settings(self):
        """The config.inc.php values, as a dict (PHP scalars and lists)."""
        ms = self.mailstore_ip
        c = {
            "db_dsnw": f"sqlite:///{self.db}?mode=0640",
            "imap_host": f"{ms}:{IMAP_PORT}",
            "smtp_host": f"{ms}:{SMTP_PORT}",
            "smtp_user": "", "smtp_pass": "",
            "smtp_helo_host": MAIL_DOMAIN,
            "mail_domain": MAIL_DOMAIN,
            "des_key": DES_KEY,
            "session_lifetime": SESSION_LIFETIME_MIN,
            "enable_installer": False,
            "log_driver": "file",
            "log_dir": os.path.join(self.dir, "logs") + "/",
            "temp_dir": os.path.join(self.dir, "temp") + "/",
            "smtp_log": True,
            "plugins": [],
            "skin": "elastic",
            # Fixed, so a response does not depend on the browser's headers
            # or on which backend answers.
            "language": "en_US",
            "timezone": "UTC",
            "product_name": "Roundcube Webmail",
            "support_url": "",
            "enable_spellcheck": False,
            "create_default_folders": False,   # MailStore creates them
            "draft_autosave": 0,
            "refresh_interval": 0,
            "imap_cache": None,
            "messages_cache": False,
            "ip_check": False,
            "useragent": "Roundcube Webmail",
            # $RS_ROUNDCUBE_PERSISTENT=1: each php-cgi child keeps its
            # database connection from one request to the next (Roundcube's
            # db_persistent), in every deployment.  Off by default, as in
            # Roundcube.  A new sqlite connection reads the whole schema
            # (0.4 ms for Roundcube's, 0.7 ms with the resplice plugin's
            # triggers) and, in WAL mode, checkpoints when it closes; with
            # it on, Action 2 measured faster in every deployment
            # (docs/performance.md, session 40).
            "db_persistent": os.environ.get("RS_ROUNDCUBE_PERSISTENT", "0") == "1",
        }
        if self.plugin:
            c["plugins"] = ["resplice"]
            # Roundcube's sqlite driver with the rows each connection
            # writes noted, for the plugin's change sets (resplice_db.php;
            # config() requires it).
            c["db_dsnw"] = f"sqlite_resplice:///{self.db}?mode=0640"
            c["resplice_state_dir"] = self.state_dir
            c["resplice_db_path"] = self.db
            # $RS_ROUNDCUBE_STATE: "changes" (the plugin's default) or
            # "snapshot" (the whole database each request), to compare.
            if os.environ.get("RS_ROUNDCUBE_STATE"):
                c["resplice_state"] = os.environ["RS_ROUNDCUBE_STATE"]
            # $RS_ROUNDCUBE_STATE_INLINE: the largest change set sent in the
            # response's head (0: every state in a file, as before session 39).
            if os.environ.get("RS_ROUNDCUBE_STATE_INLINE"):
                c["resplice_state_inline_max"] = int(os.environ["RS_ROUNDCUBE_STATE_INLINE"])
        c.update(self.extra_config)
        return c

    @staticmethod
    def _php_value(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(Roundcube._php_value(x) for x in v) + "]"
        return _php_str(v)

    def config(self):
        for d in (self.conf_dir, os.path.join(self.dir, "logs"), os.path.join(self.dir, "temp"), self.state_dir):
            os.makedirs(d, exist_ok=True)
        if self.plugin:
            install_plugin()
        lines = ["<?php", "// generated by roundcube/deploy.py", "$config = [];"]
        if self.plugin:     # the database driver: loaded before Roundcube makes its database object
            lines.append(f"require_once {_php_str(os.path.join(PLUGIN_DIR, 'resplice_db.php'))};")
        lines += [f"$config[{_php_str(k)}] = {self._php_value(v)};" for k, v in self.settings().items()]
        _write(os.path.join(self.conf_dir, "config.inc.php"), "\n".join(lines) + "\n")
        for f in ("defaults.inc.php", "mimetypes.php"):
            link = os.path.join(self.conf_dir, f)
            if not os.path.lexists(link):
                os.symlink(os.path.join(RC_ETC, f), link)
        if not os.path.exists(self.db):
            init_db(self.db)
        conf = os.path.join(self.dir, "lighttpd.conf")
        _write(conf, f"""# generated by roundcube/deploy.py
server.modules = ("mod_access", "mod_fastcgi")
server.document-root = "{HTDOCS}"
server.bind = "{self.bind}"
server.port = {self.port}
server.errorlog = "{os.path.join(self.dir, 'lighttpd.log')}"
server.follow-symlink = "enable"
server.max-keep-alive-idle = 60
server.max-keep-alive-requests = 10000
server.tag = "lighttpd"
index-file.names = ("index.php")
static-file.exclude-extensions = (".php")
url.access-deny = ("~", ".inc", ".sql", ".sh")
$HTTP["url"] =~ "^/(\\.|config|temp|logs|SQL|bin|program/(include|lib|localization|steps))" {{
  url.access-deny = ("")
}}
include_shell "/usr/share/lighttpd/create-mime.conf.pl"
fastcgi.server = (".php" => ((
  "socket" => "{self.sock}",
  "broken-scriptfilename" => "enable",
  "check-local" => "enable"
)))
""")
        return conf

    def start(self, timeout=15):
        conf = self.config()
        h = self.tb[self.host_name]
        for stale in (self.sock,):
            if os.path.exists(stale):
                os.unlink(stale)
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "ROUNDCUBE_CONFIG_DIR": self.conf_dir,
            "PHP_FCGI_CHILDREN": str(self.php_children),
            "PHP_FCGI_MAX_REQUESTS": "100000",
        }
        argv = [PHP_CGI, "-b", self.sock]
        if os.environ.get("RS_PHP_TIMES"):
            # Each request's start and end in php, appended to
            # $RS_PHP_TIMES.<host> (experiments/request_times.py).
            env["RS_PHP_TIMES"] = f"{os.environ['RS_PHP_TIMES']}.{self.host_name}"
            argv[1:1] = ["-d", f"auto_prepend_file={os.path.join(ROOT, 'roundcube', 'php_times.php')}"]
        self.d["php"] = self.tb.start(h, f"php-{self.host_name}", argv, env=env)
        if not _wait(lambda: os.path.exists(self.sock) or not self.d["php"].alive(), timeout):
            raise DeployError(f"php-cgi did not create {self.sock}; see {self.d['php'].err}")
        self.d["lighttpd"] = self.tb.start(h, f"lighttpd-{self.host_name}", [LIGHTTPD, "-D", "-f", conf])
        if not _wait(lambda: _listening(h, self.port) or not self.d["lighttpd"].alive(), timeout):
            raise DeployError(f"lighttpd not listening on {self.port}; see {self.d['lighttpd'].err}")
        for name, d in self.d.items():
            if not d.alive():
                raise DeployError(f"{name} on {self.host_name} exited; see {d.err}")
        return self

    def pids(self):
        """Every process of this backend: lighttpd, php-cgi and its children."""
        roots = [d.pid for d in self.d.values() if d.alive()]
        return roots + [p for r in roots for p in descendants(r)]

    def crash(self):
        """SIGKILLs lighttpd and every php-cgi process at once (a process
        crash of the whole backend).  Returns the monotonic time."""
        t = time.monotonic()
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for d in self.d.values():
            d.popen.wait()
        return t

    def stop(self):
        stop_roundcubes(self.tb, [self])


def stop_roundcubes(tb, rcs, others=()):
    """Stops the Roundcubes 'rcs' (lighttpd, php-cgi and its children) and
    the daemons 'others', all signalled at once, then waited for."""
    kids = [p for rc in rcs for p in rc.pids()]
    tb.stop(*others, *[rc.d[name] for rc in rcs for name in ("lighttpd", "php") if name in rc.d])
    # php-cgi ends its children on SIGTERM; make sure of it.
    _wait(lambda: not any(pid_alive(p) for p in kids), 3)
    for p in kids:
        if pid_alive(p):
            os.kill(p, signal.SIGKILL)
    for rc in rcs:
        rc.d.clear()


def install_plugin():
    """Links this checkout's plugin into Roundcube's plugin directory (Roundcube
    loads plugins from there only)."""
    if os.path.realpath(PLUGIN_DIR) == os.path.realpath(PLUGIN_SRC):
        return
    if os.path.lexists(PLUGIN_DIR) and not os.path.islink(PLUGIN_DIR):
        raise DeployError(f"{PLUGIN_DIR} exists and is not our link: remove it")
    tmp = PLUGIN_DIR + ".tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(PLUGIN_SRC, tmp)
    os.replace(tmp, PLUGIN_DIR)


def remove_db(path):
    """Removes sqlite database 'path' with its WAL and shared-memory files
    (a WAL left by a killed php must not meet the next database made
    there)."""
    for f in (path, path + "-wal", path + "-shm"):
        if os.path.exists(f):
            os.unlink(f)


def init_db(path):
    """Creates Roundcube's tables in a new sqlite database at 'path'."""
    with open(RC_SCHEMA) as f:
        schema = f.read()
    db = sqlite3.connect(path)
    try:
        db.executescript(schema)
        db.commit()
    finally:
        db.close()
    os.chmod(path, 0o640)


def pid_alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def descendants(pid):
    """PIDs of every live descendant of 'pid' (from /proc)."""
    children = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(e))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# ---- behind resplice: rs-auxlog, the fronts, the failover stack -------------

class AuxLog:
    """rs-auxlog on 'host': IMAP and SMTP of both backends pass through it to
    the mail store, recorded per web transaction and answered from the record
    when the alternate re-runs a transaction (seed §5: the auxiliary logger).

    'tap' (rs-auxlog --tap): the backends reach the mail store at its own
    address, routed through 'host', whose kernel forwards (route() puts a
    backend on that way), and rs-auxlog records what passes; a re-run still
    connects to rs-auxlog (the plugin's resplice_auxlog_host)."""

    def __init__(self, tb, run_dir, host="auxlog", mailstore_ip=MAILSTORE_IP, tap=None, store_host="mailstore"):
        self.tb, self.host_name, self.mailstore_ip = tb, host, mailstore_ip
        self.tap = AUXLOG_TAP if tap is None else tap
        self.store_host = store_host
        self.d = None
        self.routed = set()

    @property
    def ip(self):
        return self.tb[self.host_name].IP()

    def start(self):
        ms = self.mailstore_ip
        self.d = self.tb.start(self.host_name, "auxlog", [
            binary("rs-auxlog"), "--imap", f"0.0.0.0:{IMAP_PORT}={ms}:{IMAP_PORT}",
            "--smtp", f"0.0.0.0:{SMTP_PORT}={ms}:{SMTP_PORT}"]
            + (["--tap", f"{self.host_name}-eth0"] if self.tap else []), ready="listening")
        if self.tap:
            # A router that forwards, and says nothing of a shorter way (the
            # backends and the store share its LAN).
            self.tb[self.host_name].cmd("sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.send_redirects=0 "
                                        f"net.ipv4.conf.{self.host_name}-eth0.send_redirects=0")
        return self

    def route(self, host, on=True):
        """Backend 'host' and the mail store reach each other through this
        host (on) or straight again (off)."""
        op = "replace" if on else "del"
        self.tb[host].cmd(f"ip route {op} {self.mailstore_ip}/32 via {self.ip} 2>/dev/null")
        self.tb[self.store_host].cmd(f"ip route {op} {self.tb[host].IP()}/32 via {self.ip} 2>/dev/null")
        (self.routed.add if on else self.routed.discard)(host)

    def stop(self):
        for h in list(self.routed):
            self.route(h, False)
        if self.d:
            self.tb.stop(self.d)


def warm_up(tb, run_dir, hosts, one_by_one=False):
    """Runs Action 2 without its send on each of 'hosts' against its own
    lighttpd (no front: nothing is numbered or replicated), so PHP's opcache
    holds Roundcube's code: a standby that never served would compile it
    during the failover.  'one_by_one': the backends share one database,
    so they warm up one after the other (two first logins at once would
    both try to create the user)."""
    with open(os.path.join(ROOT, "roundcube", "traces", "action2.trace")) as f:
        blocks = re.split(r"\n(?=request )", f.read())
    trace = os.path.join(run_dir, "warmup.trace")
    with open(trace, "w") as f:
        f.write("\n".join(b for b in blocks if "_unlock=sending" not in b.split("\n", 1)[0]))
    def start(h):
        return tb.start(h, f"warmup-{h}", [binary("rs-client"), "--server", f"127.0.0.1:{UPSTREAM_PORT}",
                                           "--trace", trace, "--quiet", "--timeout", "10s"])

    def wait(h, d):
        if d.popen.wait(60) != 0:
            raise DeployError(f"warm-up of {h} failed; see {d.err}")

    if one_by_one:
        for h in hosts:
            wait(h, start(h))
        return
    clients = [start(h) for h in hosts]
    for h, d in zip(hosts, clients):     # side by side: the machine has two cores
        wait(h, d)


class ResplicedRoundcube:
    """The whole paper's setup (seed §6): the mail store and rs-auxlog, and
    Roundcube on the primary and the alternate, each behind rs-front,
    with rs-stated, rs-logger (roundcube/tags.conf) and rs-proxy from
    emul/stack.py.  The client talks to stack.vip.

    'crash_at' ("N" or "N+B") makes the primary's front SIGKILL itself before
    byte B of transaction N's response (rs-front --crash-at); crash() then
    kills the rest of the primary (lighttpd, php-cgi), as a process crash of
    the whole backend.  start()/stop() may be called again for a new trial
    on the same testbed (fresh databases; the mail store and rs-auxlog stay
    unless given here).  Both backends are warmed up first (warm()).

    On a testbed with a spare backend (LanTopo(spare=True)) Roundcube runs
    there too, and 'alternate_crash_at' makes the alternate's front kill
    itself likewise (crash_alternate() kills the rest): a second failover,
    to the spare.  'dump': the logger also writes every connection's two
    streams to streams/ (rs-logger --dump; for tests that read them, not for
    measurements).  'state' False: Roundcube without the resplice plugin, so
    no state reaches the alternate (what the rest of resplice costs, for the
    overhead study's resplice-nostate: not a deployment that masks a
    crash)."""

    def __init__(self, tb, run_dir, crash_at=None, auxlog=True, dead_after="100ms", mailstore=None, aux=None,
                 warm=True, alternate_crash_at=None, dump=False, state=True):
        from emul.stack import Stack
        self.tb, self.dir, self.crash_at, self.warm_first = tb, os.path.abspath(run_dir), crash_at, warm
        self.alternate_crash_at, self.dump = alternate_crash_at, dump
        hosts = ("primary", "alternate") + (("spare",) if getattr(tb.topo, "spare", False) else ())
        self.ms = mailstore or MailStore(tb, run_dir)
        self.aux = aux if aux is not None else (AuxLog(tb, run_dir) if auxlog else None)
        self._own = [x for x, given in ((self.ms, mailstore), (self.aux, aux)) if x and not given]
        tap = bool(self.aux and self.aux.tap)
        store_ip = AUXLOG_IP if self.aux and not tap else MAILSTORE_IP
        extra = {"resplice_auxlog_host": AUXLOG_IP} if tap else None
        self.rc = {h: Roundcube(tb, run_dir, h, mailstore_ip=store_ip, port=UPSTREAM_PORT, bind="127.0.0.1",
                                plugin=state, extra_config=extra) for h in hosts}
        self.stack = Stack(tb, run_dir, front={"start": lambda h: self.rc[h].start(), "port": UPSTREAM_PORT,
                                               "args": self._front_args},
                           logger_args=["--tags", TAGS]
                           + (["--dump", os.path.join(self.dir, "streams")] if dump else []),
                           dead_after=dead_after)

    def _front_args(self, host):
        rc = self.rc[host]
        # The snapshot is the whole database: the front installs it by a
        # rename (a command per state, php's start-up alone, took ~20 ms and
        # the standby lagged behind).
        argv = ["--state-dir", rc.state_dir, "--apply-file", rc.db]
        crash_at = {"primary": self.crash_at, "alternate": self.alternate_crash_at}.get(host)
        if crash_at:
            argv += ["--crash-at", str(crash_at)]
        return argv

    @property
    def vip(self):
        return self.stack.vip

    def start(self):
        for x in self._own:
            if getattr(x, "d", None) in (None, {}):
                x.start()
        for rc in self.rc.values():
            remove_db(rc.db)
            if os.path.exists(rc.db + ".resplice-seq"):
                os.unlink(rc.db + ".resplice-seq")
            if os.path.isdir(rc.state_dir):
                for f in os.listdir(rc.state_dir):
                    os.unlink(os.path.join(rc.state_dir, f))
        if self.dump:
            os.makedirs(os.path.join(self.dir, "streams"), exist_ok=True)
        if self.aux and self.aux.tap:
            for h in self.rc:
                self.aux.route(h)
        self.stack.start()
        if self.warm_first:
            self.warm()
        return self

    def warm(self):
        warm_up(self.tb, self.dir, self.rc)

    def front(self, host="primary"):
        return self.stack.d[f"app-{host}"]

    def crash(self, timeout=30, host="primary"):
        """Waits for the primary's front to die at its --crash-at point, then
        kills lighttpd and php-cgi there.  Returns the monotonic time of the
        front's death as seen here, or None when it did not die in time."""
        d = self.front(host)
        try:
            d.popen.wait(timeout)
        except Exception:
            return None
        t = time.monotonic()
        self.rc[host].crash()
        return t

    def crash_alternate(self, timeout=30):
        """crash() of the alternate, at its --crash-at point."""
        return self.crash(timeout, "alternate")

    def stop(self):
        """Stops the trial's processes (the stack and every Roundcube)."""
        stop_roundcubes(self.tb, list(self.rc.values()), self.stack.d.values())
        self.stack.d.clear()
        if self.aux and self.aux.tap:
            for h in self.rc:
                self.aux.route(h, False)

    def stop_all(self):
        self.stop()
        for x in self._own:
            x.stop()
