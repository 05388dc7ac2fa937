// Local OAuth 2.0 / OpenID Connect authorization server for the mailsync test stack.
//
// One file, two dialects (config "dialect"), each run as its own process by tests/stack/up:
//
// "google" (provider.json) behaves like Google's endpoints as far as mailsync cares (see
// docs/testing.md):
//   - a confidential web client (client_secret_post), authorization_code + refresh_token,
//     PKCE S256 honoured when sent, refresh token issued on every consent (no offline_access
//     needed) and NOT rotated (set "rotate_refresh_tokens": true to rotate);
//   - extra web clients ("extra_clients") with their own access-token lifetime and refresh
//     token rotation, so tests need not restart the provider to get that behaviour;
//   - a second client used only by Dovecot to call the introspection endpoint (client_secret_basic);
//   - access tokens carry an `email` claim (returned by introspection) so Dovecot can map
//     the token to the mailbox; the id_token carries email too.
//
// "generic" (provider2.json) is a plain OAuth 2.0 / OIDC server that is not Google:
//   - no /.well-known/openid-configuration (404); RFC 8414 metadata at
//     /.well-known/oauth-authorization-server; its own endpoint paths ("routes");
//   - scope "mail" instead of https://mail.google.com/; refresh tokens only when
//     offline_access is requested (and, per OIDC, only with prompt=consent);
//   - the id_token carries only `sub` (no email); userinfo returns email; access tokens
//     still carry `email` for introspection.
//
// Both: Google-like revocation (a revoked token, or a replayed spent rotated refresh token,
// revokes every grant of the account for the client: see revokeAccountGrants);
// tiny HTML login / consent forms at /interaction/:uid that a script can walk;
// test hooks: GET /__stats, POST /__stats/reset, POST /__fail?mode=...&count=N[&client=ID][&ms=N]
// (refresh_503, refresh_500, refresh_hang, refresh_delay, introspection_503, revocation_503,
// revocation_429, revocation_html, clear / release).
//
// Usage: node server.mjs CONFIG.json   (the file is written by tests/stack/up)

import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const cfgPath = process.argv[2] || process.env.MAILSYNC_PROVIDER_CONFIG;
if (!cfgPath) {
  console.error('usage: node server.mjs CONFIG.json');
  process.exit(2);
}
const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
const dialect = cfg.dialect || 'google';
if (!['google', 'generic'].includes(dialect)) {
  console.error(`unknown dialect ${dialect}`);
  process.exit(2);
}
const generic = dialect === 'generic';
const ttl = Number(cfg.access_token_ttl || 3600);
const rotate = Boolean(cfg.rotate_refresh_tokens);
const pkceRequired = Boolean(cfg.pkce_required);
const host = '127.0.0.1';
const port = Number(cfg.port);
const issuer = `http://${host}:${port}`;
const routes = {
  authorization: '/auth',
  token: '/token',
  userinfo: '/me',
  introspection: '/token/introspection',
  revocation: '/token/revocation',
  jwks: '/jwks',
  ...(cfg.routes || {}),
};

// accounts: [{email, password, sub}]
const accountsByEmail = new Map(cfg.accounts.map((a) => [a.email.toLowerCase(), a]));
const accountsBySub = new Map(cfg.accounts.map((a) => [a.sub, a]));

const SCOPES = cfg.scopes
  || (generic ? ['openid', 'offline_access', 'email', 'mail']
    : ['openid', 'offline_access', 'email', 'profile', 'https://mail.google.com/']);

// The web clients: "web" follows the provider-wide token settings, the extra ones carry their own.
const webClients = [
  { name: 'web', ...cfg.web_client, access_token_ttl: ttl, rotate_refresh_tokens: rotate },
  ...(cfg.extra_clients || []).map((c) => ({
    ...c,
    access_token_ttl: Number(c.access_token_ttl || ttl),
    rotate_refresh_tokens: Boolean(c.rotate_refresh_tokens),
  })),
];
const webClientsById = new Map(webClients.map((c) => [c.client_id, c]));

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'stack-1', use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [
    ...webClients.map((c) => ({
      client_id: c.client_id,
      client_secret: c.client_secret,
      client_name: c.name === 'web' ? 'mailsync web client' : `mailsync web client (${c.name})`,
      application_type: 'web',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: c.redirect_uris,
    })),
    {
      client_id: cfg.introspection_client.client_id,
      client_secret: cfg.introspection_client.client_secret,
      client_name: 'dovecot introspection',
      token_endpoint_auth_method: 'client_secret_basic',
      grant_types: [],
      response_types: [],
      redirect_uris: [],
    },
  ],
  routes,
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: SCOPES,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name'],
  },
  // google: scope claims (email) in the id_token; generic: only in userinfo (OIDC "conform")
  conformIdTokenClaims: generic,
  findAccount: async (_ctx, sub) => {
    const acct = accountsBySub.get(sub);
    if (!acct) return undefined;
    return {
      accountId: sub,
      claims: async () => ({
        sub,
        email: acct.email,
        email_verified: true,
        name: acct.name,
        given_name: acct.name,
      }),
    };
  },
  features: {
    devInteractions: { enabled: false },
    introspection: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  pkce: { required: () => pkceRequired },
  // google: a refresh token on every code exchange; generic: only with offline_access
  issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && (!generic || code.scopes.has('offline_access')),
  rotateRefreshToken: (ctx) => {
    const c = webClientsById.get(ctx.oidc.client?.clientId);
    return c ? c.rotate_refresh_tokens : rotate;
  },
  // Like Google, on both providers: revoking an access token or a refresh token revokes the
  // grant, and not only that one: every grant (with all its tokens) the same account holds
  // for the same client, also those of other, separate consents. Replay of a spent rotated
  // refresh token (oidc-provider's reuse detection) does the same. See revokeAccountGrants.
  revokeGrantPolicy: async (ctx) => {
    await revokeAccountGrants(ctx);
    return true;
  },
  extraTokenClaims: async (_ctx, token) => {
    const acct = accountsBySub.get(token.accountId);
    return acct ? { email: acct.email } : undefined;
  },
  ttl: {
    AccessToken: (_ctx, _token, client) => webClientsById.get(client?.clientId)?.access_token_ttl || ttl,
    AuthorizationCode: 600,
    IdToken: 3600,
    RefreshToken: 14 * 24 * 3600,
    Interaction: 3600,
    Session: 14 * 24 * 3600,
    Grant: 14 * 24 * 3600,
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><html><body><h1>oops</h1><pre id="error">${esc(JSON.stringify(out))}</pre></body></html>`;
  },
};

const provider = new Provider(issuer, configuration);

// ---------------------------------------------------------------- account-wide grant revocation
// oidc-provider keeps one Grant per consent (a consent in a new browser session makes a new
// one), and its revocation only ever revokes the grant of the presented token. Google revokes
// everything the account has granted to the client. So every grant is indexed here by
// account + client when the consent page saves it (the only place grants are created), and
// revokeGrantPolicy (awaited by oidc-provider before it revokes the presented token's grant)
// first revokes the siblings: their tokens, then the Grant itself.
const grantsByAccountClient = new Map(); // `${accountId} ${clientId}` -> Set(grantId)
const grantKey = (accountId, clientId) => `${accountId} ${clientId}`;

function rememberGrant(accountId, clientId, grantId) {
  const key = grantKey(accountId, clientId);
  if (!grantsByAccountClient.has(key)) grantsByAccountClient.set(key, new Set());
  grantsByAccountClient.get(key).add(grantId);
}

async function revokeAccountGrants(ctx) {
  const { route, entities, params } = ctx.oidc;
  let token;
  if (route === 'revocation') {
    token = entities.AccessToken || entities.RefreshToken; // the token being revoked
  } else if (route === 'token' && params?.grant_type === 'refresh_token') {
    token = entities.RefreshToken; // a spent rotated refresh token presented again
  }
  if (!token?.accountId || !token.clientId || !token.grantId) return; // e.g. code replay: its grant only
  const key = grantKey(token.accountId, token.clientId);
  const siblings = [...(grantsByAccountClient.get(key) || [])].filter((id) => id !== token.grantId);
  grantsByAccountClient.delete(key); // the presented token's grant goes too (policy returns true)
  for (const id of siblings) {
    await Promise.all([
      provider.AccessToken.revokeByGrantId(id),
      provider.RefreshToken.revokeByGrantId(id),
      provider.AuthorizationCode.revokeByGrantId(id),
      provider.Grant.adapter.destroy(id),
    ]);
    provider.emit('grant.revoked', ctx, id);
  }
  console.log(`${route}: revoked ${siblings.length + 1} grant(s) of account ${token.accountId} for client ${token.clientId}`);
}

// RFC 8252-style loopback redirects for the web clients: any http://127.0.0.1:<port>/<path>,
// http://[::1]:<port>/<path> or http://localhost:<port>/<path> is accepted in addition to the
// registered redirect URIs. (The code exchange still demands the exact same redirect_uri.)
{
  const orig = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (orig.call(this, value)) return true;
    if (!webClientsById.has(this.clientId)) return false;
    try {
      const u = new URL(value);
      return u.protocol === 'http:' && ['127.0.0.1', '[::1]', 'localhost'].includes(u.hostname)
        && !u.hash && !u.username && !u.password;
    } catch {
      return false;
    }
  };
}

provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));

// ---------------------------------------------------------------- test hooks
const stats = { token_requests: {}, token_requests_by_client: {}, revocation_requests: 0, introspection_requests: 0 };
// Injected failures. refresh: the next `remaining` grant_type=refresh_token requests (of
// `client` only, when set) are answered with `status` (kind "status"), held and never
// processed (kind "hang"), or processed at once with the answer delivered `delayMs` later
// (kind "delay").
const failures = {
  refresh: { remaining: 0, kind: 'status', status: 503, delayMs: 0, client: null, mode: null },
  introspection: { remaining: 0, status: 503 },
  // revocation: the next `remaining` revocation requests get `kind`: 503 or 429 with a JSON
  // error, or "html" (400 with an HTML page, as a proxy in front of the provider might).
  revocation: { remaining: 0, kind: '503' },
};
const heldRefreshes = new Set(); // { res } of requests held by refresh_hang
const delayedRefreshes = new Set(); // processed, answer not yet delivered

function resetStats() {
  stats.token_requests = { authorization_code: 0, refresh_token: 0 };
  // client_id -> { grant_type: N }; every web client is listed (zeros included)
  stats.token_requests_by_client = Object.assign(Object.create(null), Object.fromEntries(
    webClients.map((c) => [c.client_id, { authorization_code: 0, refresh_token: 0 }]),
  ));
  stats.revocation_requests = 0;
  stats.introspection_requests = 0;
  // refresh_hang: held (never passed to oidc-provider, so not in token_requests), then
  // dropped (the client went away) or released (answered 503 by mode=clear / release)
  stats.held_refresh_requests = 0;
  stats.held_refresh_requests_dropped = 0;
  stats.held_refresh_requests_released = 0;
  // refresh_delay: processed by oidc-provider at once (so also in token_requests), answer
  // delivered after the delay, or lost (the client went away before it was delivered)
  stats.delayed_refresh_requests = 0;
  stats.delayed_refresh_responses_delivered = 0;
  stats.delayed_refresh_responses_lost = 0;
}
resetStats();

// refresh_hang: keep the request (its body is read) without ever answering it or passing it
// on; a client that gives up closes the connection and the request is dropped.
function holdRefresh(res) {
  stats.held_refresh_requests += 1;
  const entry = { res };
  heldRefreshes.add(entry);
  res.on('close', () => {
    if (heldRefreshes.delete(entry)) stats.held_refresh_requests_dropped += 1;
  });
}

function releaseHeldRefreshes() {
  for (const entry of heldRefreshes) {
    heldRefreshes.delete(entry);
    stats.held_refresh_requests_released += 1;
    sendJson(entry.res, 503, { error: 'temporarily_unavailable', error_description: 'injected failure (held request released)' });
  }
}

// refresh_delay: oidc-provider handles the request now (a rotating refresh token is spent
// now); what it writes is kept and sent `ms` later. Counted as lost (once oidc-provider is
// done) when the client closed the connection before delivery.
async function delayRefresh(req, res, ms) {
  stats.delayed_refresh_requests += 1;
  const d = { processed: false, gone: false, finished: false, timer: null };
  const finish = (kind) => {
    if (d.finished) return;
    d.finished = true;
    delayedRefreshes.delete(d);
    clearTimeout(d.timer);
    if (kind === 'lost') stats.delayed_refresh_responses_lost += 1;
    else stats.delayed_refresh_responses_delivered += 1;
  };
  const origEnd = res.end;
  res.end = function delayedEnd(...args) {
    if (d.gone) {
      finish('lost');
      return res;
    }
    delayedRefreshes.add(d);
    d.timer = setTimeout(() => {
      if (d.gone) return;
      finish('delivered');
      origEnd.apply(res, args);
    }, ms);
    return res;
  };
  res.on('close', () => {
    if (d.finished) return;
    d.gone = true;
    if (d.processed) finish('lost');
  });
  await callback(req, res); // Koa resolves once oidc-provider is done (it skips writing to a closed socket)
  d.processed = true;
  if (d.gone) finish('lost');
}

// The client of a token request: client_id in the body (client_secret_post) or the user part
// of HTTP Basic (client_secret_basic, form-urlencoded per RFC 6749 2.3.1).
function tokenRequestClient(req, form) {
  const id = form.get('client_id');
  if (id) return id;
  const m = String(req.headers.authorization || '').match(/^Basic\s+(\S+)$/i);
  if (m) {
    const dec = Buffer.from(m[1], 'base64').toString('utf8');
    const i = dec.indexOf(':');
    if (i > 0) {
      try {
        return decodeURIComponent(dec.slice(0, i).replace(/\+/g, ' '));
      } catch {
        return dec.slice(0, i);
      }
    }
  }
  return 'unknown';
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj);
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

function page(title, inner) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title></head>
<body><h1>${esc(title)}</h1>
${inner}
</body></html>`;
}

// ---------------------------------------------------------------- interactions
async function interaction(req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (!m) return false;
  const action = m[2];
  const details = await provider.interactionDetails(req, res);
  const { uid, prompt, params } = details;
  if (uid !== m[1]) {
    sendHtml(res, 400, page('Error', '<p id="error">interaction mismatch</p>'));
    return true;
  }

  if (req.method === 'GET' && !action) {
    if (prompt.name === 'login') {
      const hint = params.login_hint && !String(params.login_hint).match(/^\d+$/) ? params.login_hint : '';
      sendHtml(res, 200, page('Sign in', `
<form id="login" method="post" action="/interaction/${esc(uid)}/login">
  <label>Email <input type="email" name="email" value="${esc(hint)}" autofocus></label>
  <label>Password <input type="password" name="password"></label>
  <button type="submit" id="signin">Sign in</button>
</form>
<form id="abort" method="post" action="/interaction/${esc(uid)}/abort">
  <button type="submit" id="cancel">Cancel</button>
</form>`));
      return true;
    }
    const client = await provider.Client.find(params.client_id);
    const requested = String(params.scope || '').split(' ').filter(Boolean);
    const boxes = requested.map((s, i) => `  <label><input type="checkbox" name="scope" id="scope-${i}" value="${esc(s)}" checked> ${esc(s)}</label><br>`).join('\n');
    sendHtml(res, 200, page('Grant access', `
<p>${esc(client?.clientName || params.client_id)} wants to access your account.</p>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
${boxes}
  <button type="submit" name="decision" value="allow" id="allow">Allow</button>
  <button type="submit" name="decision" value="deny" id="deny">Deny</button>
</form>`));
    return true;
  }

  if (req.method !== 'POST') {
    sendHtml(res, 405, page('Error', '<p id="error">method not allowed</p>'));
    return true;
  }
  const form = new URLSearchParams(await readBody(req));

  if (action === 'abort' || (action === 'confirm' && form.get('decision') === 'deny')) {
    await provider.interactionFinished(req, res, {
      error: 'access_denied',
      error_description: 'The user denied access',
    }, { mergeWithLastSubmission: false });
    return true;
  }

  if (action === 'login') {
    const acct = accountsByEmail.get(String(form.get('email') || '').toLowerCase());
    if (!acct || acct.password !== form.get('password')) {
      sendHtml(res, 200, page('Sign in', `
<p id="error">Wrong email or password.</p>
<form id="login" method="post" action="/interaction/${esc(uid)}/login">
  <label>Email <input type="email" name="email" value="${esc(form.get('email') || '')}"></label>
  <label>Password <input type="password" name="password"></label>
  <button type="submit" id="signin">Sign in</button>
</form>`));
      return true;
    }
    await provider.interactionFinished(req, res, { login: { accountId: acct.sub } }, { mergeWithLastSubmission: false });
    return true;
  }

  if (action === 'confirm') {
    const requested = String(params.scope || '').split(' ').filter(Boolean);
    const checked = new Set(form.getAll('scope'));
    const granted = requested.filter((s) => checked.has(s));
    const rejected = requested.filter((s) => !checked.has(s));
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    }
    if (!grant) {
      grant = new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    }
    if (granted.length) grant.addOIDCScope(granted.join(' '));
    if (rejected.length) grant.rejectOIDCScope(rejected.join(' '));
    const missingClaims = details.prompt.details.missingOIDCClaims;
    if (missingClaims?.length) grant.addOIDCClaims(missingClaims);
    const grantId = await grant.save();
    rememberGrant(grant.accountId, grant.clientId, grantId);
    const consent = details.grantId ? {} : { grantId };
    await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
    return true;
  }
  return false;
}

// ---------------------------------------------------------------- http server
const callback = provider.callback();

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);

    if (url.pathname === '/__stats' && req.method === 'GET') {
      sendJson(res, 200, {
        ...stats,
        dialect,
        access_token_ttl: ttl,
        rotate_refresh_tokens: rotate,
        clients: Object.fromEntries(webClients.map((c) => [c.client_id, {
          name: c.name, access_token_ttl: c.access_token_ttl, rotate_refresh_tokens: c.rotate_refresh_tokens,
        }])),
        held_refresh_requests_pending: heldRefreshes.size,
        delayed_refresh_responses_pending: delayedRefreshes.size,
        failures: {
          refresh: failures.refresh.remaining,
          refresh_mode: failures.refresh.remaining > 0 ? failures.refresh.mode : null,
          refresh_client: failures.refresh.remaining > 0 ? failures.refresh.client : null,
          introspection: failures.introspection.remaining,
          revocation: failures.revocation.remaining,
        },
      });
      return;
    }
    if (url.pathname === '/__stats/reset' && req.method === 'POST') {
      resetStats();
      sendJson(res, 200, { ok: true });
      return;
    }
    if (url.pathname === '/__fail' && req.method === 'POST') {
      const mode = url.searchParams.get('mode') || '';
      const count = Number(url.searchParams.get('count') || '1');
      const modes = ['refresh_503', 'refresh_500', 'refresh_hang', 'refresh_delay', 'introspection_503',
        'revocation_503', 'revocation_429', 'revocation_html', 'clear', 'release'];
      const bad = (error) => sendJson(res, 400, { error, modes });
      // client: a web client's client_id or name (refresh modes only)
      let client = url.searchParams.get('client') || null;
      if (client !== null) {
        client = webClients.find((c) => c.name === client)?.client_id || client;
        if (!webClientsById.has(client)) return bad(`unknown client ${client}`);
        if (!mode.startsWith('refresh_')) return bad('client applies to the refresh_* modes only');
      }
      if (!Number.isInteger(count) || count < 0) return bad(`bad count ${url.searchParams.get('count')}`);
      if (mode === 'clear' || mode === 'release') {
        failures.refresh.remaining = 0;
        failures.introspection.remaining = 0;
        failures.revocation.remaining = 0;
        releaseHeldRefreshes(); // delayed answers still go out when their delay is over
      } else if (mode === 'refresh_503' || mode === 'refresh_500') {
        failures.refresh = { remaining: count, kind: 'status', status: mode === 'refresh_503' ? 503 : 500, delayMs: 0, client, mode };
      } else if (mode === 'refresh_hang') {
        failures.refresh = { remaining: count, kind: 'hang', status: 0, delayMs: 0, client, mode };
      } else if (mode === 'refresh_delay' || mode === 'refresh_delay_ms') {
        const ms = Number(url.searchParams.get('ms'));
        if (!Number.isInteger(ms) || ms <= 0) return bad('refresh_delay needs ms=<positive integer>');
        failures.refresh = { remaining: count, kind: 'delay', status: 0, delayMs: ms, client, mode: 'refresh_delay' };
      } else if (mode === 'introspection_503') {
        failures.introspection = { remaining: count, status: 503 };
      } else if (mode.startsWith('revocation_') && ['503', '429', 'html'].includes(mode.slice(11))) {
        failures.revocation = { remaining: count, kind: mode.slice(11) };
      } else {
        return bad(`unknown mode ${mode}`);
      }
      sendJson(res, 200, { ok: true, mode, count, ...(client ? { client } : {}) });
      return;
    }

    if (url.pathname.startsWith('/interaction/')) {
      if (await interaction(req, res, url)) return;
    }

    // RFC 8414 metadata only: the generic provider has no OpenID discovery document.
    if (generic && url.pathname === '/.well-known/openid-configuration') {
      sendJson(res, 404, { error: 'not_found', error_description: 'no OpenID discovery here; see /.well-known/oauth-authorization-server' });
      return;
    }
    if (generic && url.pathname === '/.well-known/oauth-authorization-server' && req.method === 'GET') {
      req.url = '/.well-known/openid-configuration' + url.search; // the same metadata document
      callback(req, res);
      return;
    }

    // Google-only prompt value that oidc-provider does not know: drop it (google dialect only;
    // the generic provider rejects it like any unsupported prompt).
    if (!generic && url.pathname === routes.authorization && url.searchParams.has('prompt')) {
      const prompts = url.searchParams.get('prompt').split(' ').filter((p) => p && p !== 'select_account');
      if (prompts.length) url.searchParams.set('prompt', prompts.join(' '));
      else url.searchParams.delete('prompt');
      req.url = url.pathname + url.search;
    }

    if ((url.pathname === routes.token || url.pathname === routes.introspection) && req.method === 'POST') {
      const raw = await readBody(req);
      if (url.pathname === routes.token) {
        const form = new URLSearchParams(raw);
        const grantType = form.get('grant_type') || 'unknown';
        const clientId = tokenRequestClient(req, form);
        const f = failures.refresh;
        const inject = grantType === 'refresh_token' && f.remaining > 0 && (!f.client || f.client === clientId);
        if (inject) f.remaining -= 1;
        if (inject && f.kind === 'hang') {
          holdRefresh(res); // not counted in token_requests: it never reaches oidc-provider
          return;
        }
        stats.token_requests[grantType] = (stats.token_requests[grantType] || 0) + 1;
        const perClient = (stats.token_requests_by_client[clientId] ||= {});
        perClient[grantType] = (perClient[grantType] || 0) + 1;
        if (inject && f.kind === 'status') {
          const st = f.status;
          sendJson(res, st, { error: st === 503 ? 'temporarily_unavailable' : 'server_error', error_description: 'injected failure' });
          return;
        }
        if (inject && f.kind === 'delay') {
          req.body = raw;
          await delayRefresh(req, res, f.delayMs);
          return;
        }
      } else {
        stats.introspection_requests += 1;
        if (failures.introspection.remaining > 0) {
          failures.introspection.remaining -= 1;
          sendJson(res, failures.introspection.status, { error: 'temporarily_unavailable', error_description: 'injected failure' });
          return;
        }
      }
      req.body = raw; // oidc-provider uses a pre-read body when the stream is consumed
    } else if (url.pathname === routes.revocation && req.method === 'POST') {
      stats.revocation_requests += 1;
      if (failures.revocation.remaining > 0) {
        failures.revocation.remaining -= 1;
        const kind = failures.revocation.kind;
        if (kind === 'html') {
          res.writeHead(400, { 'content-type': 'text/html' });
          res.end('<html><body>400 Bad Request</body></html>');
        } else {
          sendJson(res, Number(kind), { error: 'temporarily_unavailable', error_description: 'injected failure' });
        }
        return;
      }
    }

    callback(req, res);
  } catch (err) {
    console.error('request failed', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.end();
  }
});

server.listen(port, host, () => {
  const extra = webClients.filter((c) => c.name !== 'web')
    .map((c) => `${c.name}: ttl ${c.access_token_ttl}s rotate ${c.rotate_refresh_tokens}`).join('; ');
  console.log(`provider (${dialect}) listening on ${issuer} (access token ttl ${ttl}s, rotate refresh ${rotate}${extra ? `; ${extra}` : ''})`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
