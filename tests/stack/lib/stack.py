#!/usr/bin/env python3
"""Start / stop the mailsync local test stack (python3 stdlib only).

Called by tests/stack/up, tests/stack/down and tests/stack/bin/restart-provider.
See docs/testing.md.
"""

import errno
import fcntl
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
STACK_SRC = os.path.dirname(HERE)
PROVIDER_DIR = os.path.join(STACK_SRC, "provider")
POSTFIX_MASTER = "/usr/lib/postfix/sbin/master"
PG_BIN = os.environ.get("MAILSYNC_PG_BIN", "/usr/lib/postgresql/15/bin")
DOMAIN = "example.test"
SERVICES = ("provider", "provider2", "dovecot", "postfix", "postgres")
WEB_REDIRECTS = [
    "http://127.0.0.1:8765/_grid/cmds/dlg_gmailoauth.aspx",
    "http://localhost:8765/_grid/cmds/dlg_gmailoauth.aspx",
    "https://contoso.crm.example.com/_grid/cmds/dlg_gmailoauth.aspx",
]
ACCOUNTS = [
    ("alice", "Alice", False),
    ("bob", "Bob", False),
    ("carol", "Carol", False),
    ("dave", "Dave", True),
] + [
    # for the sync engine's tests (e.g. many mailboxes syncing at once); append only: an
    # account's index gives its Google-dialect `sub`
    (f"sync{i:02d}", f"Sync {i:02d}", False) for i in range(1, 21)
]
# Password-only accounts for many-mailbox tests (workers sharing PostgreSQL): bulk001 ..
# bulk{BULK_COUNT}, all with one password (secrets.json "bulk_password"), IMAP/POP3 by
# PLAIN/LOGIN only (the OAuth providers do not know them). `up` adds them to a running
# stack of an older checkout without restarting it (Dovecot re-reads its passwd-file).
BULK_PREFIX = "bulk"
BULK_COUNT = 1000
PORT_ENV = {
    "provider": "MAILSYNC_STACK_PROVIDER_PORT",
    "provider2": "MAILSYNC_STACK_PROVIDER2_PORT",
    "imap_tls": "MAILSYNC_STACK_IMAP_TLS_PORT",
    "imap_plain": "MAILSYNC_STACK_IMAP_PLAIN_PORT",
    "pop3_tls": "MAILSYNC_STACK_POP3_TLS_PORT",
    "pop3_plain": "MAILSYNC_STACK_POP3_PLAIN_PORT",
    "smtp_starttls": "MAILSYNC_STACK_SMTP_STARTTLS_PORT",
    "smtp_tls": "MAILSYNC_STACK_SMTP_TLS_PORT",
    "postgres": "MAILSYNC_STACK_POSTGRES_PORT",
}
# Extra clients of the Google-like provider, each with a fixed token behaviour, so tests need
# not restart the shared provider: name -> (access token TTL in s, or None for the stack's
# --token-ttl; rotate refresh tokens on every use, or None for --rotate-refresh-tokens).
# "web" is the historical client (oauth.client_id) and follows the command-line knobs.
GOOGLE_CLIENTS = {
    "web": (None, None),
    "short": (5, False),
    "rotating": (3600, True),
    "short_rotating": (5, True),
}
# The generic (non-Google-dialect) provider: RFC 8414 metadata only, generic endpoint paths,
# scope "mail", refresh tokens only with offline_access, no email in the id_token.
GENERIC_MAIL_SCOPE = "mail"
GENERIC_SCOPES = ["openid", "offline_access", "email", GENERIC_MAIL_SCOPE]
GENERIC_ROUTES = {
    "authorization": "/oauth2/authorize",
    "token": "/oauth2/token",
    "userinfo": "/oauth2/userinfo",
    "introspection": "/oauth2/introspect",
    "revocation": "/oauth2/revoke",
    "jwks": "/oauth2/jwks",
}
GENERIC_TTL = 3600
# Version of what `up` generates (accounts, configs). Bump it when a running stack must be
# restarted to pick a change up: `up` restarts a stack whose stack.json has an older one.
# 2: the sync01..sync20 accounts, stack.json dovecot_conf.
STACK_LAYOUT = 2

# Where the state goes when the checkout is not reachable by the service users (see
# resolve_state_dir); tests/stack/run then is a symlink to it.
SERVICE_USERS = ("postgres", "mail", "postfix", "dovecot")
DEFAULT_STATE = os.path.join(STACK_SRC, "run")
EXTERNAL_PREFIX = "/var/tmp/mailsync-stack-"
MARKER = ".mailsync-stack.json"


T0 = time.monotonic()


def log(msg):
    if os.environ.get("MAILSYNC_STACK_QUIET") != "1":
        print(f"[stack] {msg}", file=sys.stderr, flush=True)


def timing(msg):
    if os.environ.get("MAILSYNC_STACK_TIMING") == "1":
        log(f"{time.monotonic() - T0:6.3f}s {msg}")


class Paths:
    def __init__(self, state):
        self.state = os.path.abspath(state)
        s = self.state
        self.marker = os.path.join(s, MARKER)
        self.logs = os.path.join(s, "logs")
        self.pids = os.path.join(s, "pids")
        self.tls = os.path.join(s, "tls")
        self.ca_cert = os.path.join(self.tls, "ca.pem")
        self.ca_key = os.path.join(self.tls, "ca.key")
        self.server_cert = os.path.join(self.tls, "server.pem")
        self.server_key = os.path.join(self.tls, "server.key")
        self.secrets = os.path.join(s, "secrets.json")
        self.stack_json = os.path.join(s, "stack.json")
        self.provider_json = os.path.join(s, "provider.json")
        self.provider2_json = os.path.join(s, "provider2.json")
        self.dovecot_dir = os.path.join(s, "dovecot")
        self.dovecot_base = os.path.join(s, "dovecot", "run")
        self.dovecot_conf = os.path.join(s, "dovecot", "dovecot.conf")
        self.mail = os.path.join(s, "mail")
        self.postfix_conf = os.path.join(s, "postfix", "etc")
        self.postfix_queue = os.path.join(s, "postfix", "queue")
        self.postfix_data = os.path.join(s, "postfix", "data")
        self.pg_root = os.path.join(s, "postgres")
        self.pg_data = os.path.join(s, "postgres", "data")
        self.pg_sock = os.path.join(s, "postgres", "sock")
        self.lmtp_socket = os.path.join(self.dovecot_base, "lmtp")
        self.auth_socket = os.path.join(self.dovecot_base, "auth-postfix")

    def pidfile(self, name):
        return os.path.join(self.pids, f"{name}.pid")

    def provider_json_of(self, name):
        return self.provider2_json if name == "provider2" else self.provider_json


# ----------------------------------------------------------------- where the state lives
#
# PostgreSQL runs as `postgres`, Dovecot's mail processes as `mail`, its auth process as
# `dovecot`, Postfix's daemons as `postfix`: each must be able to traverse every ancestor of
# its part of the state dir. A checkout under a 0700 directory (/root, a `mktemp -d` dir) is
# not reachable for them. Then, unless MAILSYNC_STACK_DIR says otherwise, the state goes to a
# root-owned directory of the stack's own, /var/tmp/mailsync-stack-<hash of the checkout
# path>, and tests/stack/run becomes a symlink to it, so every consumer that reads
# tests/stack/run/stack.json (bin/*, the Rust harness, the binding suites, scripts/*) finds it.


def checkout_id():
    return os.path.realpath(STACK_SRC)


def external_state_dir():
    return EXTERNAL_PREFIX + hashlib.sha256(checkout_id().encode()).hexdigest()[:12]


def _others_can_traverse(path):
    cur = os.path.realpath(path)
    while True:
        if not os.stat(cur).st_mode & stat.S_IXOTH:
            return False
        parent = os.path.dirname(cur)
        if parent == cur:
            return True
        cur = parent


def unreachable_users(path):
    """The service users that cannot traverse into the existing directory `path`."""
    if _others_can_traverse(path):
        return []  # fast path: o+x on every ancestor
    bad = []
    for user in SERVICE_USERS:
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue  # not installed (yet): nothing of it runs
        r = subprocess.run(["runuser", "-u", user, "--", "test", "-x", path],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        if r.returncode != 0:
            bad.append(user)
    return bad


def _existing_ancestor(path):
    while not os.path.isdir(path):
        path = os.path.dirname(path)
    return path


def read_marker(state):
    try:
        with open(os.path.join(state, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_marker(state):
    m = read_marker(state)
    if m and m.get("checkout") == checkout_id():
        return
    write(os.path.join(state, MARKER), json.dumps(
        {"checkout": checkout_id(), "note": "state of the mailsync test stack (tests/stack/up)"},
        indent=2) + "\n", 0o644)


def ensure_external_dir(path):
    """Create / validate the stack's own state dir outside the checkout."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        os.mkdir(path, 0o755)
        st = os.lstat(path)
    # /var/tmp is world-writable: only a real directory that root owns and only root can
    # write is acceptable (never follow a symlink planted there)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise SystemExit(f"[stack] refusing to use {path}: not a directory owned and writable "
                         "only by root (remove it, or set MAILSYNC_STACK_DIR)")
    if stat.S_IMODE(st.st_mode) != 0o755:
        os.chmod(path, 0o755)
    m = read_marker(path)
    if m and m.get("checkout") != checkout_id():
        raise SystemExit(f"[stack] {path} belongs to the checkout {m.get('checkout')}, not "
                         f"{checkout_id()} (set MAILSYNC_STACK_DIR to choose another state dir)")
    write_marker(path)
    bad = unreachable_users(path)
    if bad:
        raise SystemExit(f"[stack] {path} is not reachable by {', '.join(bad)} either; "
                         "set MAILSYNC_STACK_DIR to a directory they can traverse")
    return path


def point_default_state_to(target):
    tmp = DEFAULT_STATE + ".new-link"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(target, tmp)
    os.replace(tmp, DEFAULT_STATE)


# files of an unreachable tests/stack/run that need not (or must not) be carried over
_DISPOSABLE = {".harness.lock", ".stack.lock", "stack.json", "pids", MARKER}


def migrate_state(src, dst):
    """Move an (unusable) state dir's contents into dst, keeping owners and modes."""
    old = Paths(src)
    if any(read_pid(old, n) for n in SERVICES):
        cmd_down(old)
    for name in sorted(os.listdir(src)):
        s_, d_ = os.path.join(src, name), os.path.join(dst, name)
        if name in _DISPOSABLE:
            if os.path.isdir(s_) and not os.path.islink(s_):
                shutil.rmtree(s_)
            else:
                os.unlink(s_)
            continue
        if os.path.lexists(d_):
            raise SystemExit(f"[stack] cannot move {s_} to {d_}: it exists; remove one of them")
        try:
            os.rename(s_, d_)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            run(["cp", "-a", "--", s_, d_])
            if os.path.isdir(s_) and not os.path.islink(s_):
                shutil.rmtree(s_)
            else:
                os.unlink(s_)
    os.rmdir(src)


def resolve_state_dir(for_up):
    """The state dir to use. Only `up` (for_up) creates / relocates anything."""
    env = os.environ.get("MAILSYNC_STACK_DIR")
    if env:
        state = os.path.abspath(env)
        if for_up:
            bad = unreachable_users(_existing_ancestor(state))
            if bad:
                raise SystemExit(
                    f"[stack] MAILSYNC_STACK_DIR={state} is not reachable by {', '.join(bad)} "
                    "(a parent directory lacks o+x): choose another directory, or unset "
                    "MAILSYNC_STACK_DIR and let tests/stack/up place the state itself")
        return state
    link = DEFAULT_STATE
    if not for_up:
        return os.path.realpath(link)  # follows tests/stack/run -> /var/tmp/... if it is one
    ours = external_state_dir()
    if os.path.islink(link):
        target = os.path.abspath(os.path.join(STACK_SRC, os.readlink(link)))
        if target == ours:
            return ensure_external_dir(ours)  # recreated if /var/tmp was cleaned
        if not target.startswith(EXTERNAL_PREFIX):
            # a pointer somebody set up by hand: respect it, if the services can use it
            if os.path.isdir(target):
                bad = unreachable_users(target)
                if bad:
                    raise SystemExit(f"[stack] {link} -> {target} is not reachable by "
                                     f"{', '.join(bad)}")
                return os.path.realpath(target)
            raise SystemExit(f"[stack] {link} -> {target}: no such directory")
        # the state dir of another checkout (copied with its symlink) or of an old path
        log(f"{link} pointed to {target}, which is not this checkout's; re-pointing it")
        os.unlink(link)
    reachable = not unreachable_users(STACK_SRC)
    if os.path.isdir(link) and not os.path.islink(link):
        if reachable:
            return link
        ensure_external_dir(ours)
        log(f"{link} is not reachable by the service users; moving the state to {ours}")
        migrate_state(link, ours)
        point_default_state_to(ours)
        return ours
    if reachable:
        return link
    ensure_external_dir(ours)
    point_default_state_to(ours)
    log(f"the checkout is not reachable by the service users ({STACK_SRC}); "
        f"state dir: {ours} ({link} points to it)")
    return ours


def lock_path():
    """A lock file that does not move when tests/stack/run is relocated."""
    env = os.environ.get("MAILSYNC_STACK_DIR")
    if env:
        os.makedirs(env, exist_ok=True)
        return os.path.join(os.path.abspath(env), ".stack.lock")
    return os.path.join(STACK_SRC, ".stack.lock")


def take_lock():
    f = open(lock_path(), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


# ----------------------------------------------------------------- helpers


def run(cmd, **kw):
    kw.setdefault("check", True)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.STDOUT)
    kw.setdefault("text", True)
    try:
        return subprocess.run(cmd, **kw)
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"[stack] command failed: {' '.join(cmd)}\n{e.stdout or ''}\n")
        raise


def write(path, text, mode=0o644, group=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if group:
        shutil.chown(tmp, group=group)
    os.replace(tmp, path)


def pid_alive(pid, expect=None):
    """True if pid runs and (optionally) its executable/cmdline contains `expect`."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, TypeError, ValueError):
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(") ", 1)[1].startswith("Z"):
                return False
        if expect:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            return expect in cmd
    except OSError:
        return False
    return True


EXPECT = {"provider": "provider.json", "provider2": "provider2.json", "dovecot": "dovecot",
          "postfix": "master", "postgres": "postgres"}


def read_pid(paths, name):
    try:
        with open(paths.pidfile(name)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def free_port(taken):
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p not in taken and p != 8765:
            return p
    raise RuntimeError("no free port")


def wait_until(what, fn, timeout=15.0, interval=0.05):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if fn():
                return
        except Exception as e:  # noqa: BLE001 - polled
            last = e
        time.sleep(interval)
    raise RuntimeError(f"{what} did not come up within {timeout}s (last error: {last})")


def tcp_banner(port, prefix, tls_ctx=None):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        if tls_ctx is not None:
            with tls_ctx.wrap_socket(s, server_hostname="localhost") as t:
                return t.recv(512).startswith(prefix)
        return s.recv(512).startswith(prefix)


# ----------------------------------------------------------------- TLS


def ensure_tls(p):
    if all(os.path.exists(x) for x in (p.ca_cert, p.server_cert, p.server_key)):
        return
    os.makedirs(p.tls, exist_ok=True)
    log("generating test CA and server certificate")
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
         "-keyout", p.ca_key, "-out", p.ca_cert, "-subj", "/CN=mailsync test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    csr = os.path.join(p.tls, "server.csr")
    ext = os.path.join(p.tls, "server.ext")
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", p.server_key,
         "-out", csr, "-subj", "/CN=localhost"])
    write(ext, "basicConstraints=critical,CA:FALSE\n"
               "keyUsage=critical,digitalSignature,keyEncipherment\n"
               "extendedKeyUsage=serverAuth\n"
               "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", p.ca_cert, "-CAkey", p.ca_key,
         "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", ext, "-out", p.server_cert])
    os.chmod(p.server_key, 0o600)
    os.chmod(p.ca_key, 0o600)


# ----------------------------------------------------------------- secrets


def ensure_secrets(p):
    """secrets.json: generated once per state dir; keys added by newer versions are filled in."""
    sec = {}
    if os.path.exists(p.secrets):
        with open(p.secrets) as f:
            sec = json.load(f)
    before = json.dumps(sec, sort_keys=True)
    tok = lambda: secrets.token_hex(12)  # noqa: E731 - URL-safe (used inside a URL)
    sec.setdefault("web_client_id", "mailsync-web-" + secrets.token_hex(4) + ".apps.example.test")
    sec.setdefault("web_client_secret", "GOCSPX-" + tok())
    sec.setdefault("introspection_client_id", "dovecot-introspection")
    sec.setdefault("introspection_client_secret", tok())
    sec.setdefault("postgres_password", tok())
    sec.setdefault("bulk_password", tok())
    passwords = sec.setdefault("accounts", {})
    for name, _, _ in ACCOUNTS:  # accounts added by newer versions get a password too
        passwords.setdefault(name, tok())
    clients = sec.setdefault("clients", {})
    for name in GOOGLE_CLIENTS:
        if name == "web":
            continue
        slug = name.replace("_", "-")
        clients.setdefault(name, {
            "client_id": f"mailsync-{slug}-" + secrets.token_hex(4) + ".apps.example.test",
            "client_secret": "GOCSPX-" + tok(),
        })
    sec.setdefault("generic", {
        "client_id": str(uuid.uuid4()),
        "client_secret": secrets.token_urlsafe(24),
        "introspection_client_id": "dovecot-introspection",
        "introspection_client_secret": tok(),
    })
    if json.dumps(sec, sort_keys=True) != before:
        write(p.secrets, json.dumps(sec, indent=2) + "\n", 0o600)
    return sec


def accounts(sec, dialect="google"):
    out = []
    for i, (name, display, disabled) in enumerate(ACCOUNTS):
        email = f"{name}@{DOMAIN}"
        a = {
            "email": email,
            "password": sec["accounts"][name],
            "name": display,
            # Google: a numeric string; the generic provider: a UUID (stable per address)
            "sub": (str(100000000000000000000 + i + 1) if dialect == "google"
                    else str(uuid.uuid5(uuid.NAMESPACE_URL, f"mailsync-stack:{email}"))),
        }
        if disabled:
            a["imap_pop_disabled"] = True
        out.append(a)
    return out


def google_clients(sec, ttl, rotate):
    """name -> {client_id, client_secret, access_token_ttl, rotate_refresh_tokens}."""
    out = {}
    for name, (c_ttl, c_rotate) in GOOGLE_CLIENTS.items():
        if name == "web":
            cid, csec = sec["web_client_id"], sec["web_client_secret"]
        else:
            cid, csec = sec["clients"][name]["client_id"], sec["clients"][name]["client_secret"]
        out[name] = {
            "client_id": cid,
            "client_secret": csec,
            "access_token_ttl": ttl if c_ttl is None else c_ttl,
            "rotate_refresh_tokens": rotate if c_rotate is None else c_rotate,
        }
    return out


# ----------------------------------------------------------------- configs


def provider_config(p, sec, ports, ttl, rotate):
    """provider.json: the Google-like provider. The web client follows `ttl` / `rotate`."""
    extra = [
        {"name": name, "client_id": c["client_id"], "client_secret": c["client_secret"],
         "redirect_uris": WEB_REDIRECTS, "access_token_ttl": c["access_token_ttl"],
         "rotate_refresh_tokens": c["rotate_refresh_tokens"]}
        for name, c in google_clients(sec, ttl, rotate).items() if name != "web"
    ]
    return {
        "dialect": "google",
        "port": ports["provider"],
        "access_token_ttl": ttl,
        "rotate_refresh_tokens": rotate,
        "pkce_required": os.environ.get("MAILSYNC_STACK_PKCE_REQUIRED") == "1",
        "web_client": {
            "client_id": sec["web_client_id"],
            "client_secret": sec["web_client_secret"],
            "redirect_uris": WEB_REDIRECTS,
        },
        "extra_clients": extra,
        "introspection_client": {
            "client_id": sec["introspection_client_id"],
            "client_secret": sec["introspection_client_secret"],
        },
        "accounts": accounts(sec),
    }


def provider2_config(p, sec, ports, ttl=GENERIC_TTL, rotate=False):
    """provider2.json: the generic (non-Google-dialect) provider."""
    g = sec["generic"]
    return {
        "dialect": "generic",
        "port": ports["provider2"],
        "access_token_ttl": ttl,
        "rotate_refresh_tokens": rotate,
        "pkce_required": os.environ.get("MAILSYNC_STACK_PKCE_REQUIRED") == "1",
        "routes": GENERIC_ROUTES,
        "scopes": GENERIC_SCOPES,
        "web_client": {
            "client_id": g["client_id"],
            "client_secret": g["client_secret"],
            "redirect_uris": WEB_REDIRECTS,
        },
        "extra_clients": [],
        "introspection_client": {
            "client_id": g["introspection_client_id"],
            "client_secret": g["introspection_client_secret"],
        },
        "accounts": accounts(sec, "generic"),
    }


def bulk_emails():
    return [f"{BULK_PREFIX}{i:03d}@{DOMAIN}" for i in range(1, BULK_COUNT + 1)]


def bulk_user_lines(sec):
    return [f"{e}:{{PLAIN}}{sec['bulk_password']}::::::" for e in bulk_emails()]


def bulk_description(sec):
    return {"prefix": BULK_PREFIX, "count": BULK_COUNT, "domain": DOMAIN,
            "password": sec["bulk_password"]}


def ensure_bulk_accounts(p):
    """A running stack started by a checkout without the bulk accounts (or fewer of them) gets
    them now: the passwd-file gains their lines (Dovecot re-reads it when it changes) and
    stack.json its "bulk" section; nothing restarts."""
    with open(p.stack_json) as f:
        desc = json.load(f)
    sec = ensure_secrets(p)
    if desc.get("bulk") == bulk_description(sec):
        return
    users = os.path.join(p.dovecot_dir, "users")
    with open(users) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith(BULK_PREFIX)]
    write(users, "\n".join(lines + bulk_user_lines(sec)) + "\n", 0o640, "dovecot")
    desc["bulk"] = bulk_description(sec)
    write(p.stack_json, json.dumps(desc, indent=2) + "\n", 0o644)
    log(f"added {BULK_COUNT} bulk accounts to the running stack")


def dovecot_config(p, sec, ports):
    accts = accounts(sec)
    auth_debug = "yes" if os.environ.get("MAILSYNC_STACK_AUTH_DEBUG") == "1" else "no"
    # passwd-file with the accounts' passwords (PLAIN/LOGIN logins)
    lines = []
    for a in accts:
        lines.append(f"{a['email']}:{{PLAIN}}{a['password']}::::::")
    lines += bulk_user_lines(sec)
    write(os.path.join(p.dovecot_dir, "users"), "\n".join(lines) + "\n", 0o640, "dovecot")
    # per-service "access disabled" lists (dave): consulted after a successful authentication
    for service in ("imap", "pop3"):
        label = "IMAP" if service == "imap" else "POP"
        # every account is listed (so the lookup never logs "unknown user"); only the
        # disabled ones carry nologin + reason
        body = "".join(
            f"{a['email']}:::::::nopassword=y"
            + (f" nologin=y reason=%{{env:MAILSYNC_{label}_DISABLED_REASON}}" if a.get("imap_pop_disabled") else "")
            + "\n"
            for a in accts)
        write(os.path.join(p.dovecot_dir, f"disabled.{service}"), body, 0o640, "dovecot")
    allowed = "".join(f"{a['email']}:::::::nopassword=y\n" for a in accts)
    for service in ("smtp", "lmtp", "submission", "doveadm"):
        write(os.path.join(p.dovecot_dir, f"disabled.{service}"), allowed, 0o640, "dovecot")
    issuer_port = ports["provider"]
    write(os.path.join(p.dovecot_dir, "oauth2.conf"), f"""\
introspection_mode = post
introspection_url = http://{sec['introspection_client_id']}:{sec['introspection_client_secret']}@127.0.0.1:{issuer_port}/token/introspection
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
scope = https://mail.google.com/
openid_configuration_url = http://127.0.0.1:{issuer_port}/.well-known/openid-configuration
timeout_msecs = 5000
""", 0o640, "dovecot")
    # the generic provider (provider2): its own introspection client, its own mail scope, and
    # no openid_configuration_url (it has no OpenID discovery document)
    g = sec["generic"]
    write(os.path.join(p.dovecot_dir, "oauth2-generic.conf"), f"""\
introspection_mode = post
introspection_url = http://{g['introspection_client_id']}:{g['introspection_client_secret']}@127.0.0.1:{ports['provider2']}{GENERIC_ROUTES['introspection']}
force_introspection = yes
username_attribute = email
active_attribute = active
active_value = true
scope = {GENERIC_MAIL_SCOPE}
timeout_msecs = 5000
""", 0o640, "dovecot")
    conf = f"""\
# Generated by tests/stack/up -- do not edit (edit tests/stack/lib/stack.py)
instance_name = mailsync-stack
base_dir = {p.dovecot_base}
state_dir = {os.path.join(p.dovecot_dir, 'state')}
listen = 127.0.0.1
protocols = imap pop3 lmtp
log_path = {os.path.join(p.logs, 'dovecot.log')}
info_log_path = {os.path.join(p.logs, 'dovecot.log')}
debug_log_path = {os.path.join(p.logs, 'dovecot.log')}
ssl = yes
ssl_cert = <{p.server_cert}
ssl_key = <{p.server_key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = xoauth2 oauthbearer plain login
auth_username_format = %Lu
auth_verbose = yes
auth_verbose_passwords = no
auth_debug = {auth_debug}
auth_debug_passwords = no
auth_failure_delay = 0
mail_location = maildir:{p.mail}/%d/%n/Maildir
mail_uid = mail
mail_gid = mail
first_valid_uid = 8
first_valid_gid = 8
pop3_uidl_format = %08Xu%08Xv
lmtp_save_to_detail_mailbox = no
mail_max_userip_connections = 100
login_greeting = mailsync test stack ready.
# values come from dovecot's environment (set by stack.py); used as nologin reasons (dave)
import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS MAILSYNC_IMAP_DISABLED_REASON MAILSYNC_POP_DISABLED_REASON

namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
    auto = create
  }}
  mailbox Sent {{
    special_use = \\Sent
    auto = create
  }}
  mailbox Trash {{
    special_use = \\Trash
    auto = create
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = create
  }}
}}

# 1. bearer tokens of the generic provider (provider2), validated by its introspection
# endpoint. A refusal continues (result_failure = continue) with 1b.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {os.path.join(p.dovecot_dir, 'oauth2-generic.conf')}
  result_success = continue-ok
}}
# 1b. bearer tokens of the Google-like provider; skipped when 1 accepted the token. It comes
# last so that a refused token's challenge names its openid-configuration (Dovecot takes the
# URL from the last oauth2 passdb). An internal failure (provider down, injected 503) of the
# passdb that owns the token still ends as a temporary failure.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {os.path.join(p.dovecot_dir, 'oauth2.conf')}
  skip = authenticated
  result_success = continue-ok
}}
# 2. the accounts' passwords (PLAIN / LOGIN)
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%Lu {os.path.join(p.dovecot_dir, 'users')}
  result_success = continue-ok
}}
# 3. per-service refusal after a successful authentication (dave: IMAP/POP disabled)
passdb {{
  driver = passwd-file
  args = username_format=%Lu {os.path.join(p.dovecot_dir, 'disabled.%s')}
  skip = unauthenticated
  result_failure = return-ok
  result_internalfail = return-ok
}}
userdb {{
  driver = static
  args = uid=mail gid=mail home={p.mail}/%d/%n allow_all_users=yes
}}

service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {ports['imap_plain']}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {ports['imap_tls']}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {ports['pop3_plain']}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {ports['pop3_tls']}
    ssl = yes
  }}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service auth {{
  unix_listener auth-postfix {{
    mode = 0666
  }}
}}
protocol imap {{
  mail_max_userip_connections = 100
}}
"""
    write(p.dovecot_conf, conf)


def postfix_config(p, ports):
    logs = p.logs
    main = f"""\
# Generated by tests/stack/up -- do not edit (edit tests/stack/lib/stack.py)
compatibility_level = 3.6
queue_directory = {p.postfix_queue}
data_directory = {p.postfix_data}
mail_owner = postfix
setgid_group = postdrop
maillog_file = {os.path.join(logs, 'postfix.log')}
maillog_file_prefixes = {logs}
myhostname = mail.{DOMAIN}
mydomain = {DOMAIN}
myorigin = $mydomain
mydestination =
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
relay_domains =
relayhost =
local_transport = error:local delivery is disabled in the test stack
default_transport = error:mail to outside domains is disabled in the test stack
relay_transport = error:relaying is disabled in the test stack
virtual_mailbox_domains = {DOMAIN}
virtual_transport = lmtp:unix:{p.lmtp_socket}
alias_maps =
alias_database =
smtputf8_enable = yes
biff = no
append_dot_mydomain = no
message_size_limit = 52428800
smtpd_banner = $myhostname ESMTP mailsync test stack
smtpd_tls_cert_file = {p.server_cert}
smtpd_tls_key_file = {p.server_key}
smtpd_tls_security_level = may
smtpd_tls_auth_only = yes
smtpd_sasl_type = dovecot
smtpd_sasl_path = {p.auth_socket}
smtpd_sasl_auth_enable = no
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_recipient_restrictions = reject_unauth_destination
smtpd_client_restrictions =
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 200
smtp_tls_security_level = none
"""
    # Like Gmail, submission refuses a MAIL FROM the login does not own: each
    # address is owned by the account of the same name.
    sender_map = os.path.join(p.postfix_conf, "sender_login_maps")
    sub_opts = f"""\
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=permit_sasl_authenticated,reject
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_recipient_restrictions=reject_unauth_destination
  -o smtpd_sender_login_maps=regexp:{sender_map}
  -o smtpd_sender_restrictions=reject_sender_login_mismatch
"""
    master = f"""\
# Generated by tests/stack/up -- do not edit (edit tests/stack/lib/stack.py)
127.0.0.1:{ports['smtp_starttls']} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
{sub_opts}127.0.0.1:{ports['smtp_tls']} inet n - n - - smtpd
  -o syslog_name=postfix/smtps
  -o smtpd_tls_wrappermode=yes
{sub_opts}pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""
    write(sender_map, "/^(.+)$/ ${1}\n")
    write(os.path.join(p.postfix_conf, "main.cf"), main)
    write(os.path.join(p.postfix_conf, "master.cf"), master)


# ----------------------------------------------------------------- start / stop


def start_provider(p, name="provider"):
    """name: "provider" (Google-like, provider.json) or "provider2" (generic, provider2.json)."""
    logf = open(os.path.join(p.logs, f"{name}.log"), "a")
    proc = subprocess.Popen(["node", os.path.join(PROVIDER_DIR, "server.mjs"), p.provider_json_of(name)],
                            cwd=PROVIDER_DIR, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                            start_new_session=True)
    write(p.pidfile(name), f"{proc.pid}\n")
    return proc.pid


def start_dovecot(p):
    for stale in ("master.pid", "anvil-auth-penalty"):
        try:
            os.unlink(os.path.join(p.dovecot_base, stale))
        except FileNotFoundError:
            pass
    logf = open(os.path.join(p.logs, "dovecot-stderr.log"), "a")
    env = dict(os.environ,
               MAILSYNC_IMAP_DISABLED_REASON="IMAP access is disabled for this account",
               MAILSYNC_POP_DISABLED_REASON="POP access is disabled for this account")
    proc = subprocess.Popen(["dovecot", "-F", "-c", p.dovecot_conf], stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=logf, env=env, start_new_session=True)
    write(p.pidfile("dovecot"), f"{proc.pid}\n")
    return proc.pid


def start_postfix(p):
    for d in (p.postfix_queue, p.postfix_data):
        os.makedirs(d, exist_ok=True)
    shutil.chown(p.postfix_data, "postfix", "postfix")
    os.chmod(p.postfix_data, 0o700)
    master_pid = os.path.join(p.postfix_queue, "pid", "master.pid")
    try:
        os.unlink(master_pid)
    except FileNotFoundError:
        pass
    # create the queue directories with the right owners once per state dir (takes ~1 s)
    marker = os.path.join(p.postfix_queue, ".permissions-set")
    if not os.path.exists(marker):
        run(["postfix", "-c", p.postfix_conf, "set-permissions"], check=False)
        open(marker, "w").close()
    # run master(8) directly in the foreground (-d): `postfix start` spends ~2 s in `postfix check`
    env = dict(os.environ, MAIL_CONFIG=p.postfix_conf)
    logf = open(os.path.join(p.logs, "postfix-stderr.log"), "a")
    proc = subprocess.Popen([POSTFIX_MASTER, "-c", p.postfix_conf, "-d"], stdin=subprocess.DEVNULL,
                            stdout=logf, stderr=logf, env=env, start_new_session=True)
    mp = proc.pid
    write(p.pidfile("postfix"), f"{mp}\n")
    return mp


def start_postgres(p, sec, port):
    pw = sec["postgres_password"]
    fresh = not os.path.exists(os.path.join(p.pg_data, "PG_VERSION"))
    os.makedirs(p.pg_sock, exist_ok=True)
    shutil.chown(p.pg_root, "postgres", "postgres")
    shutil.chown(p.pg_sock, "postgres", "postgres")
    pglog = os.path.join(p.logs, "postgres.log")
    if not os.path.exists(pglog):
        open(pglog, "a").close()
    shutil.chown(pglog, "postgres", "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    if fresh:
        log("initialising PostgreSQL cluster")
        pwfile = os.path.join(p.pg_root, "pwfile")
        write(pwfile, secrets.token_hex(16) + "\n", 0o600)
        shutil.chown(pwfile, "postgres", "postgres")
        run(as_pg + [os.path.join(PG_BIN, "initdb"), "-D", p.pg_data, "-U", "postgres",
                     "-A", "scram-sha-256", "--auth-local=peer", "--pwfile", pwfile, "-N",
                     "-E", "UTF8", "--locale=C.UTF-8"])
        os.unlink(pwfile)
    # stale lock from a crash: remove when its pid is not a live postgres
    pm = os.path.join(p.pg_data, "postmaster.pid")
    if os.path.exists(pm):
        try:
            with open(pm) as f:
                old = int(f.readline().strip())
        except ValueError:
            old = -1
        if not pid_alive(old, "postgres"):
            os.unlink(pm)
    for name in os.listdir(p.pg_sock):
        os.unlink(os.path.join(p.pg_sock, name))
    opts = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={p.pg_sock} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=64MB")
    run(as_pg + [os.path.join(PG_BIN, "pg_ctl"), "-D", p.pg_data, "-l", pglog, "-o", opts,
                 "-w", "-t", "20", "start"])
    with open(pm) as f:
        pid = int(f.readline().strip())
    write(p.pidfile("postgres"), f"{pid}\n")
    if fresh:
        sql = (f"CREATE ROLE mailsync LOGIN CREATEDB PASSWORD '{pw}';\n"
               "CREATE DATABASE mailsync OWNER mailsync;\n")
        run(as_pg + ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", p.pg_sock, "-p", str(port),
                     "-d", "postgres", "-c", sql.split("\n")[0]])
        run(as_pg + ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", p.pg_sock, "-p", str(port),
                     "-d", "postgres", "-c", sql.split("\n")[1]])
    return pid


def stop_pid(name, pid, timeout=15.0):
    if pid is None or not pid_alive(pid, EXPECT.get(name)):
        return False
    sig = signal.SIGINT if name == "postgres" else signal.SIGTERM  # postgres: fast shutdown
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    log(f"{name} (pid {pid}) did not stop in {timeout}s, sending SIGKILL")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    return True


def running_state(p):
    """Return (all_alive, {name: pid or None})."""
    pids = {n: read_pid(p, n) for n in SERVICES}
    alive = {n: (pid if pid and pid_alive(pid, EXPECT[n]) else None) for n, pid in pids.items()}
    return all(alive.values()), alive


def cmd_down(p, purge=False):
    if os.path.isdir(p.pids):
        stopped = []
        # stop the mail servers before the providers and the database
        for name in ("postfix", "dovecot", "provider", "provider2", "postgres"):
            pid = read_pid(p, name)
            if stop_pid(name, pid):
                stopped.append(f"{name}({pid})")
            try:
                os.unlink(p.pidfile(name))
            except FileNotFoundError:
                pass
        try:
            os.unlink(p.stack_json)
        except FileNotFoundError:
            pass
        log("stopped " + (", ".join(stopped) if stopped else "nothing (already down)"))
    else:
        log("stack is not running")
    if purge:
        purge_state(p)
    return 0


def purge_state(p):
    """down --purge: delete the state dir (and the tests/stack/run symlink to it)."""
    link = DEFAULT_STATE
    if os.path.isdir(p.state):
        # only ever delete something that is recognisably a stack state dir
        if not (os.path.exists(p.marker) or os.path.exists(p.secrets)):
            raise SystemExit(f"[stack] not purging {p.state}: it does not look like a stack state dir")
        shutil.rmtree(p.state)
        log(f"deleted {p.state}")
    if os.path.islink(link) and os.path.realpath(link) == os.path.realpath(p.state):
        os.unlink(link)


def pick_ports():
    ports = {}
    taken = set()
    for key, env in PORT_ENV.items():
        if os.environ.get(env):
            ports[key] = int(os.environ[env])
            taken.add(ports[key])
    for key in PORT_ENV:
        if key not in ports:
            ports[key] = free_port(taken)
            taken.add(ports[key])
    return ports


def stack_description(p, sec, ports, ttl, pids, rotate):
    issuer = f"http://127.0.0.1:{ports['provider']}"
    issuer2 = f"http://127.0.0.1:{ports['provider2']}"
    g = sec["generic"]
    pg_pw = sec["postgres_password"]
    r = GENERIC_ROUTES
    return {
        "layout": STACK_LAYOUT,
        "state_dir": p.state,
        "logs_dir": p.logs,
        "ca_cert": p.ca_cert,
        "domain": DOMAIN,
        "oauth": {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/auth",
            "token_endpoint": f"{issuer}/token",
            "revocation_endpoint": f"{issuer}/token/revocation",
            "userinfo_endpoint": f"{issuer}/me",
            "introspection_endpoint": f"{issuer}/token/introspection",
            "discovery_url": f"{issuer}/.well-known/openid-configuration",
            "jwks_uri": f"{issuer}/jwks",
            "client_id": sec["web_client_id"],
            "client_secret": sec["web_client_secret"],
            "token_endpoint_auth_method": "client_secret_post",
            "redirect_uris": WEB_REDIRECTS,
            "loopback_redirects_any_port": True,
            "scopes": ["openid", "email", "profile", "https://mail.google.com/"],
            "access_token_ttl": ttl,
            "rotate_refresh_tokens": rotate,
            "clients": google_clients(sec, ttl, rotate),
            "introspection_client_id": sec["introspection_client_id"],
            "introspection_client_secret": sec["introspection_client_secret"],
            "stats_url": f"{issuer}/__stats",
            "fail_url": f"{issuer}/__fail",
        },
        "oauth2_generic": {
            "issuer": issuer2,
            "metadata_url": f"{issuer2}/.well-known/oauth-authorization-server",
            "discovery_url": None,
            "authorization_endpoint": issuer2 + r["authorization"],
            "token_endpoint": issuer2 + r["token"],
            "revocation_endpoint": issuer2 + r["revocation"],
            "userinfo_endpoint": issuer2 + r["userinfo"],
            "introspection_endpoint": issuer2 + r["introspection"],
            "jwks_uri": issuer2 + r["jwks"],
            "client_id": g["client_id"],
            "client_secret": g["client_secret"],
            "token_endpoint_auth_method": "client_secret_post",
            "redirect_uris": WEB_REDIRECTS,
            "loopback_redirects_any_port": True,
            "mail_scope": GENERIC_MAIL_SCOPE,
            "scopes": GENERIC_SCOPES,
            "default_scope": " ".join(GENERIC_SCOPES),
            "refresh_token_requires_offline_access": True,
            "id_token_has_email": False,
            "access_token_ttl": GENERIC_TTL,
            "rotate_refresh_tokens": False,
            "clients": {"web": {"client_id": g["client_id"], "client_secret": g["client_secret"],
                                "access_token_ttl": GENERIC_TTL, "rotate_refresh_tokens": False}},
            "introspection_client_id": g["introspection_client_id"],
            "introspection_client_secret": g["introspection_client_secret"],
            "stats_url": f"{issuer2}/__stats",
            "fail_url": f"{issuer2}/__fail",
        },
        "imap": {"host": "127.0.0.1", "tls_port": ports["imap_tls"], "plain_port": ports["imap_plain"]},
        "pop3": {"host": "127.0.0.1", "tls_port": ports["pop3_tls"], "plain_port": ports["pop3_plain"]},
        "smtp": {"host": "127.0.0.1", "starttls_port": ports["smtp_starttls"], "tls_port": ports["smtp_tls"]},
        "lmtp_socket": p.lmtp_socket,
        "dovecot_conf": p.dovecot_conf,
        "postgres": {
            "host": "127.0.0.1",
            "port": ports["postgres"],
            "user": "mailsync",
            "password": pg_pw,
            "database": "mailsync",
            "url": f"postgres://mailsync:{pg_pw}@127.0.0.1:{ports['postgres']}/mailsync",
        },
        "accounts": [
            {k: v for k, v in a.items() if k != "sub"} | {"sub": a["sub"]} for a in accounts(sec)
        ],
        "bulk": bulk_description(sec),
        "pids": pids,
    }


def provider_ready_url(name, port):
    # provider2 (generic) has no OpenID discovery document, only RFC 8414 metadata
    path = "/.well-known/oauth-authorization-server" if name == "provider2" else "/.well-known/openid-configuration"
    return f"http://127.0.0.1:{port}{path}"


def wait_provider(name, port):
    url = provider_ready_url(name, port)

    def ok():
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    wait_until(name, ok, timeout=20)


def cmd_up(p, ttl, rotate):
    t0 = time.monotonic()
    all_alive, alive = running_state(p)
    desc = None
    if all_alive and os.path.exists(p.stack_json):
        with open(p.stack_json) as f:
            desc = json.load(f)
        if desc.get("layout", 1) < STACK_LAYOUT:
            # started by an older version of this script (e.g. without accounts added since)
            log(f"the running stack has layout {desc.get('layout', 1)}, this checkout's is "
                f"{STACK_LAYOUT}; restarting it (all tokens become invalid)")
            cmd_down(p)
            desc = None
    if desc is not None:
        # A test that died while it had shortened the token lifetime (or
        # turned on rotation) must not leak that into the next run.
        oauth = desc["oauth"]
        if oauth.get("access_token_ttl") != ttl or oauth.get("rotate_refresh_tokens", False) != rotate:
            log(f"provider runs with other token settings; restarting it (ttl {ttl}s, rotate {rotate})")
            rc = cmd_restart_provider(p, ttl, rotate)
            if rc != 0:
                return rc
        generic = desc.get("oauth2_generic", {})
        if generic.get("access_token_ttl") != GENERIC_TTL or generic.get("rotate_refresh_tokens", False):
            log(f"provider2 runs with other token settings; restarting it (ttl {GENERIC_TTL}s)")
            rc = cmd_restart_provider(p, GENERIC_TTL, False, "provider2")
            if rc != 0:
                return rc
        ensure_bulk_accounts(p)
        print(f"stack already running ({p.stack_json})")
        return 0
    if any(read_pid(p, n) for n in SERVICES):
        log("cleaning up a partially running / crashed stack")
        cmd_down(p)
    for d in (p.state, p.logs, p.pids, p.dovecot_dir, p.dovecot_base, p.mail):
        os.makedirs(d, exist_ok=True)
    # the services (non-root users) must be able to traverse to their directories
    os.chmod(p.state, 0o755)
    write_marker(p.state)
    shutil.chown(p.mail, "mail", "mail")
    ensure_tls(p)
    sec = ensure_secrets(p)
    ports = pick_ports()
    write(p.provider_json, json.dumps(provider_config(p, sec, ports, ttl, rotate), indent=2) + "\n", 0o600)
    write(p.provider2_json, json.dumps(provider2_config(p, sec, ports), indent=2) + "\n", 0o600)
    dovecot_config(p, sec, ports)
    postfix_config(p, ports)
    os.makedirs(p.pg_root, exist_ok=True)

    pids = {}
    try:
        pids["provider"] = start_provider(p, "provider")
        pids["provider2"] = start_provider(p, "provider2")
        timing("providers spawned")
        pids["postgres"] = start_postgres(p, sec, ports["postgres"])
        timing("postgres started")
        pids["dovecot"] = start_dovecot(p)
        wait_provider("provider", ports["provider"])
        wait_provider("provider2", ports["provider2"])
        timing("providers answer")
        ctx = ssl.create_default_context(cafile=p.ca_cert)
        wait_until("dovecot imap", lambda: tcp_banner(ports["imap_plain"], b"* OK"))
        wait_until("dovecot imaps", lambda: tcp_banner(ports["imap_tls"], b"* OK", ctx))
        wait_until("dovecot pop3", lambda: tcp_banner(ports["pop3_plain"], b"+OK"))
        wait_until("dovecot pop3s", lambda: tcp_banner(ports["pop3_tls"], b"+OK", ctx))
        wait_until("dovecot lmtp", lambda: os.path.exists(p.lmtp_socket))
        wait_until("dovecot auth socket", lambda: os.path.exists(p.auth_socket))
        timing("dovecot answers")
        pids["postfix"] = start_postfix(p)
        timing("postfix started")
        wait_until("postfix submission", lambda: tcp_banner(ports["smtp_starttls"], b"220"))
        wait_until("postfix smtps", lambda: tcp_banner(ports["smtp_tls"], b"220", ctx))
        wait_until("postgres", lambda: run([os.path.join(PG_BIN, "pg_isready"), "-q", "-h", "127.0.0.1",
                                            "-p", str(ports["postgres"])], check=False).returncode == 0)
    except Exception as e:
        log(f"start-up failed: {e}; see {p.logs}")
        cmd_down(p)
        return 1
    desc = stack_description(p, sec, ports, ttl, pids, rotate)
    write(p.stack_json, json.dumps(desc, indent=2) + "\n", 0o644)
    log(f"stack up in {time.monotonic() - t0:.2f}s: {p.stack_json}")
    print(p.stack_json)
    return 0


def cmd_restart_provider(p, ttl, rotate, name="provider"):
    """Restart one provider (all its tokens die) with new web-client token settings."""
    try:
        with open(p.stack_json) as f:
            desc = json.load(f)
    except FileNotFoundError:
        log("stack is not running (no stack.json); run tests/stack/up")
        return 1
    cfg_path = p.provider_json_of(name)
    with open(cfg_path) as f:
        pcfg = json.load(f)
    if ttl is None:
        ttl = pcfg["access_token_ttl"]
    if rotate is None:
        rotate = pcfg.get("rotate_refresh_tokens", False)
    pcfg["access_token_ttl"] = ttl
    pcfg["rotate_refresh_tokens"] = rotate
    write(cfg_path, json.dumps(pcfg, indent=2) + "\n", 0o600)
    stop_pid(name, read_pid(p, name))
    pid = start_provider(p, name)
    try:
        wait_provider(name, pcfg["port"])
    except RuntimeError as e:
        log(str(e))
        return 1
    section = desc["oauth2_generic"] if name == "provider2" else desc["oauth"]
    section["access_token_ttl"] = ttl
    section["rotate_refresh_tokens"] = rotate
    web = section.get("clients", {}).get("web")
    if web is not None:
        web["access_token_ttl"] = ttl
        web["rotate_refresh_tokens"] = rotate
    desc["pids"][name] = pid
    write(p.stack_json, json.dumps(desc, indent=2) + "\n", 0o644)
    log(f"{name} restarted (pid {pid}, access token ttl {ttl}s, rotate refresh tokens {rotate})")
    return 0


def parse_args(argv):
    ttl = None
    rotate = None
    provider = "provider"
    purge = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--token-ttl":
            ttl = int(argv[i + 1])
            i += 2
        elif a.startswith("--token-ttl="):
            ttl = int(a.split("=", 1)[1])
            i += 1
        elif a == "--rotate-refresh-tokens":
            rotate = True
            i += 1
        elif a == "--no-rotate-refresh-tokens":
            rotate = False
            i += 1
        elif a in ("--provider", "--provider=google", "--provider=generic"):
            v = a.split("=", 1)[1] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            if v not in ("google", "generic"):
                raise SystemExit("--provider takes google or generic")
            provider = "provider2" if v == "generic" else "provider"
            i += 1 if "=" in a else 2
        elif a == "--purge":
            purge = True
            i += 1
        else:
            raise SystemExit(f"unknown argument {a}")
    return ttl, rotate, provider, purge


USAGE = """usage: stack.py up [--token-ttl N] [--rotate-refresh-tokens]
       stack.py down [--purge]
       stack.py restart-provider [--provider google|generic] [--token-ttl N] [--[no-]rotate-refresh-tokens]"""


def main():
    if len(sys.argv) < 2:
        raise SystemExit(USAGE)
    cmd = sys.argv[1]
    ttl, rotate, provider, purge = parse_args(sys.argv[2:])
    if cmd not in ("up", "down", "restart-provider"):
        raise SystemExit(f"unknown command {cmd}\n{USAGE}")
    if purge and cmd != "down":
        raise SystemExit("--purge is an option of down")
    if provider != "provider" and cmd != "restart-provider":
        raise SystemExit("--provider is an option of restart-provider")
    lock = take_lock()  # one up / down / restart at a time per state dir
    try:
        p = Paths(resolve_state_dir(for_up=(cmd == "up")))
        if cmd == "up":
            if ttl is None:
                ttl = int(os.environ.get("MAILSYNC_TOKEN_TTL", "3600"))
            if rotate is None:
                rotate = os.environ.get("MAILSYNC_ROTATE_REFRESH") == "1"
            return cmd_up(p, ttl, rotate)
        if cmd == "down":
            return cmd_down(p, purge)
        return cmd_restart_provider(p, ttl, rotate, provider)
    finally:
        lock.close()


if __name__ == "__main__":
    sys.exit(main())
