"""Shared code for the helper scripts in tests/stack/bin (python3 stdlib only)."""

import base64
import hashlib
import html.parser
import http.cookiejar
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
STACK_SRC = os.path.dirname(HERE)


def state_dir():
    """$MAILSYNC_STACK_DIR or tests/stack/run (a directory, or a symlink that tests/stack/up
    made to the state dir outside a checkout the service users cannot reach)."""
    return os.path.abspath(os.environ.get("MAILSYNC_STACK_DIR") or os.path.join(STACK_SRC, "run"))


PROVIDERS = ("google", "generic")


def provider_section(stack, provider="google"):
    """stack.json's section of a provider: "google" -> oauth, "generic" -> oauth2_generic."""
    if provider == "google":
        return stack["oauth"]
    if provider == "generic":
        if "oauth2_generic" not in stack:
            die("stack.json has no oauth2_generic section: restart the stack (tests/stack/down; tests/stack/up)")
        return stack["oauth2_generic"]
    die(f"unknown provider {provider!r} (google or generic)")


def client_credentials(stack, provider="google", client="web"):
    """(client_id, client_secret) of a named client of a provider."""
    o = provider_section(stack, provider)
    clients = o.get("clients") or {"web": {"client_id": o["client_id"], "client_secret": o["client_secret"]}}
    if client not in clients:
        die(f"unknown client {client!r} of the {provider} provider (known: {', '.join(sorted(clients))})")
    c = clients[client]
    return c["client_id"], c["client_secret"]


def load_stack():
    path = os.path.join(state_dir(), "stack.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        sys.exit(f"{path} not found: start the stack with tests/stack/up")


def die(msg, code=1):
    print(msg, file=sys.stderr)
    sys.exit(code)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: D401
        return None


class _FormParser(html.parser.HTMLParser):
    """Collects <form>s with their inputs and submit buttons."""

    def __init__(self):
        super().__init__()
        self.forms = []
        self.cur = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.cur = {"id": a.get("id"), "action": a.get("action", ""), "method": a.get("method", "get"),
                        "inputs": [], "buttons": []}
            self.forms.append(self.cur)
        elif self.cur is not None and tag == "input":
            self.cur["inputs"].append(a)
        elif self.cur is not None and tag == "button":
            self.cur["buttons"].append(a)

    def handle_endtag(self, tag):
        if tag == "form":
            self.cur = None


class Browser:
    """Plain-HTTP client with a cookie jar that never follows redirects by itself."""

    def __init__(self):
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect)

    def request(self, url, data=None):
        body = urllib.parse.urlencode(data, doseq=True).encode() if data is not None else None
        req = urllib.request.Request(url, data=body)
        if body is not None:
            req.add_header("Content-Type", "application/x-www-form-urlencoded")
        try:
            resp = self.opener.open(req, timeout=15)
        except urllib.error.HTTPError as e:
            resp = e
        with resp:
            return resp.status, resp.headers, resp.read().decode("utf-8", "replace")


def _origin(url):
    u = urllib.parse.urlsplit(url)
    return (u.scheme, u.hostname, u.port or (443 if u.scheme == "https" else 80))


def consent(auth_url, email, password, deny=False, uncheck=()):
    """Walk login + consent; return the Location of the redirect to the client's redirect_uri."""
    b = Browser()
    provider = _origin(auth_url)
    url = auth_url
    for _ in range(20):
        status, headers, body = b.request(url) if isinstance(url, str) else b.request(*url)
        if status in (301, 302, 303, 307, 308):
            loc = urllib.parse.urljoin(url if isinstance(url, str) else url[0], headers["Location"])
            if _origin(loc) != provider:
                return loc
            url = loc
            continue
        if status != 200:
            die(f"consent: unexpected HTTP {status} at {url if isinstance(url, str) else url[0]}: {body[:500]}")
        page_url = url if isinstance(url, str) else url[0]
        p = _FormParser()
        p.feed(body)
        forms = {f["id"]: f for f in p.forms}
        if "login" in forms:
            if "Wrong email or password" in body:
                die("consent: login refused (wrong email or password)")
            if deny and "abort" in forms:
                url = (urllib.parse.urljoin(page_url, forms["abort"]["action"]), {})
                continue
            url = (urllib.parse.urljoin(page_url, forms["login"]["action"]), {"email": email, "password": password})
            continue
        if "consent" in forms:
            f = forms["consent"]
            scopes = [i["value"] for i in f["inputs"] if i.get("name") == "scope" and i.get("value") not in uncheck]
            data = {"scope": scopes, "decision": "deny" if deny else "allow"}
            url = (urllib.parse.urljoin(page_url, f["action"]), data)
            continue
        die(f"consent: page without a login or consent form at {page_url}: {body[:500]}")
    die("consent: too many steps")


def pkce_pair():
    verifier = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def post_form(url, data, timeout=15):
    req = urllib.request.Request(url, data=urllib.parse.urlencode(data).encode())
    req.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def account(stack, email):
    for a in stack["accounts"]:
        if a["email"].lower() == email.lower():
            return a
    bulk = stack.get("bulk")
    if bulk:
        local, _, domain = email.lower().partition("@")
        number = local[len(bulk["prefix"]):]
        if (local.startswith(bulk["prefix"]) and domain == bulk["domain"] and number.isdigit()
                and 1 <= int(number) <= bulk["count"]):
            return {"email": email.lower(), "password": bulk["password"], "name": local}
    die(f"unknown test account {email}")


def token(stack, email, scope=None, uncheck=(), client="web", provider="google", prompt="consent"):
    """Consent + code exchange for a test account; returns the token response's fields.

    google: Google-style authorization request (access_type=offline, include_granted_scopes);
    default scope "openid email profile https://mail.google.com/".
    generic: a plain OAuth/OIDC request; default scope "openid email offline_access mail"
    (a refresh token is only issued with offline_access, which needs prompt=consent)."""
    o = provider_section(stack, provider)
    client_id, client_secret = client_credentials(stack, provider, client)
    acct = account(stack, email)
    if scope is None:
        scope = o.get("default_scope") or ("openid email profile https://mail.google.com/"
                                           if provider == "google" else "openid email offline_access mail")
    redirect_uri = o["redirect_uris"][0]
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    q = {
        "client_id": client_id, "redirect_uri": redirect_uri, "response_type": "code",
        "scope": scope, "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
        "login_hint": email,
    }
    if prompt:
        q["prompt"] = prompt
    if provider == "google":
        q.update({"access_type": "offline", "include_granted_scopes": "true"})
    loc = consent(o["authorization_endpoint"] + "?" + urllib.parse.urlencode(q), email, acct["password"],
                  uncheck=uncheck)
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(loc).query))
    if params.get("state") != state:
        die("token: state mismatch in redirect")
    if "code" not in params:
        die(f"token: no code in redirect: error={params.get('error')}")
    status, body = post_form(o["token_endpoint"], {
        "grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect_uri,
        "client_id": client_id, "client_secret": client_secret, "code_verifier": verifier,
    })
    if status != 200:
        die(f"token: token endpoint answered {status}: {body}")
    t = json.loads(body)
    return {k: t.get(k) for k in ("access_token", "refresh_token", "expires_in", "scope", "id_token", "token_type")}
