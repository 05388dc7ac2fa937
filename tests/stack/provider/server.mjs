// Local OAuth 2.0 / OpenID Connect authorization server for the mailsync test stack.
//
// Behaves like Google's endpoints as far as mailsync cares (see docs/testing.md):
//   - a confidential web client (client_secret_post), authorization_code + refresh_token,
//     PKCE S256 honoured when sent, refresh token issued on every consent (no offline_access
//     needed) and NOT rotated (set "rotate_refresh_tokens": true to rotate);
//   - a second client used only by Dovecot to call the introspection endpoint (client_secret_basic);
//   - access tokens carry an `email` claim (returned by introspection) so Dovecot can map
//     the token to the mailbox;
//   - tiny HTML login / consent forms at /interaction/:uid that a script can walk;
//   - test hooks: GET /__stats, POST /__stats/reset, POST /__fail?mode=...&count=N.
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
const ttl = Number(cfg.access_token_ttl || 3600);
const rotate = Boolean(cfg.rotate_refresh_tokens);
const pkceRequired = Boolean(cfg.pkce_required);
const host = '127.0.0.1';
const port = Number(cfg.port);
const issuer = `http://${host}:${port}`;

// accounts: [{email, password, sub}]
const accountsByEmail = new Map(cfg.accounts.map((a) => [a.email.toLowerCase(), a]));
const accountsBySub = new Map(cfg.accounts.map((a) => [a.sub, a]));

const SCOPES = ['openid', 'offline_access', 'email', 'profile', 'https://mail.google.com/'];

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'stack-1', use: 'sig', alg: 'RS256' };

const configuration = {
  clients: [
    {
      client_id: cfg.web_client.client_id,
      client_secret: cfg.web_client.client_secret,
      client_name: 'mailsync web client',
      application_type: 'web',
      token_endpoint_auth_method: 'client_secret_post',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: cfg.web_client.redirect_uris,
    },
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
  jwks: { keys: [jwk] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: SCOPES,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name'],
  },
  conformIdTokenClaims: false,
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
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => rotate,
  // Google: revoking an access token or a refresh token revokes the whole grant.
  revokeGrantPolicy: () => true,
  extraTokenClaims: async (_ctx, token) => {
    const acct = accountsBySub.get(token.accountId);
    return acct ? { email: acct.email } : undefined;
  },
  ttl: {
    AccessToken: ttl,
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

// RFC 8252-style loopback redirects for the web client: any http://127.0.0.1:<port>/<path>,
// http://[::1]:<port>/<path> or http://localhost:<port>/<path> is accepted in addition to the
// registered redirect URIs. (The code exchange still demands the exact same redirect_uri.)
{
  const orig = provider.Client.prototype.redirectUriAllowed;
  provider.Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
    if (orig.call(this, value)) return true;
    if (this.clientId !== cfg.web_client.client_id) return false;
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
const stats = { token_requests: {}, revocation_requests: 0, introspection_requests: 0 };
const failures = { refresh: { remaining: 0, status: 503 }, introspection: { remaining: 0, status: 503 } };

function resetStats() {
  stats.token_requests = { authorization_code: 0, refresh_token: 0 };
  stats.revocation_requests = 0;
  stats.introspection_requests = 0;
}
resetStats();

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
        access_token_ttl: ttl,
        rotate_refresh_tokens: rotate,
        failures: { refresh: failures.refresh.remaining, introspection: failures.introspection.remaining },
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
      const known = {
        refresh_503: ['refresh', 503],
        refresh_500: ['refresh', 500],
        introspection_503: ['introspection', 503],
      };
      if (mode === 'clear') {
        failures.refresh.remaining = 0;
        failures.introspection.remaining = 0;
      } else if (known[mode]) {
        const [which, status] = known[mode];
        failures[which] = { remaining: count, status };
      } else {
        sendJson(res, 400, { error: `unknown mode ${mode}`, modes: [...Object.keys(known), 'clear'] });
        return;
      }
      sendJson(res, 200, { ok: true, mode, count });
      return;
    }

    if (url.pathname.startsWith('/interaction/')) {
      if (await interaction(req, res, url)) return;
    }

    // Google-only prompt value that oidc-provider does not know: drop it.
    if (url.pathname === '/auth' && url.searchParams.has('prompt')) {
      const prompts = url.searchParams.get('prompt').split(' ').filter((p) => p && p !== 'select_account');
      if (prompts.length) url.searchParams.set('prompt', prompts.join(' '));
      else url.searchParams.delete('prompt');
      req.url = url.pathname + url.search;
    }

    if ((url.pathname === '/token' || url.pathname === '/token/introspection') && req.method === 'POST') {
      const raw = await readBody(req);
      if (url.pathname === '/token') {
        const grantType = new URLSearchParams(raw).get('grant_type') || 'unknown';
        stats.token_requests[grantType] = (stats.token_requests[grantType] || 0) + 1;
        if (grantType === 'refresh_token' && failures.refresh.remaining > 0) {
          failures.refresh.remaining -= 1;
          const st = failures.refresh.status;
          sendJson(res, st, { error: st === 503 ? 'temporarily_unavailable' : 'server_error', error_description: 'injected failure' });
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
    } else if (url.pathname === '/token/revocation' && req.method === 'POST') {
      stats.revocation_requests += 1;
    }

    callback(req, res);
  } catch (err) {
    console.error('request failed', err);
    if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    else res.end();
  }
});

server.listen(port, host, () => {
  console.log(`provider listening on ${issuer} (access token ttl ${ttl}s, rotate refresh ${rotate})`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
