// A real OpenID Connect provider (npm oidc-provider 9) for the login tests (test_oidc_login.py):
// authorization code + PKCE for the server's browser login (confidential client nubis-web), device
// authorization and loopback redirects for `nubis login --oidc` (public native client nubis-cli),
// refresh tokens (offline_access). ID tokens carry email, preferred_username and groups.
//
// Interactions are a small custom pair instead of the provider's dev pages: GET /interaction/:uid
// logs in the account named by the authorization request's login_hint at once, else shows a form
// whose only field is `login` (POST /interaction/:uid/login); consent is granted without asking.
// So a test drives every flow with httpx following redirects.
//
// The signing key is the test's (OIDC_JWK, a private JWK with its kid), so the test can also forge
// tokens this issuer's key signs; a restart with another key is a key rotation.
// Usage: OIDC_PORT=N OIDC_JWK='{...}' OIDC_WEB_SECRET=S OIDC_REDIRECT_URI=http://127.0.0.1:M/auth/callback node login.mjs
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const key = JSON.parse(process.env.OIDC_JWK);
const ACCOUNTS = {
  alice: { email: 'alice@a.test', groups: ['team-a'] },
  bob: { email: 'bob@b.test', groups: ['team-b'] },
  carol: { email: 'carol@ops.test', groups: ['platform-admins'] },
  dave: { preferred_username: 'dave', groups: ['visitors'] },
};

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'nubis-web',
      client_secret: process.env.OIDC_WEB_SECRET,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: [process.env.OIDC_REDIRECT_URI],
    },
    {
      client_id: 'nubis-cli',
      application_type: 'native',
      token_endpoint_auth_method: 'none',
      grant_types: ['authorization_code', 'refresh_token', 'urn:ietf:params:oauth:grant-type:device_code'],
      response_types: ['code'],
      redirect_uris: ['http://127.0.0.1/callback'], // any port: RFC 8252 §7.3
    },
  ],
  jwks: { keys: [key] },
  cookies: { keys: ['nubis-login-test-cookie-key'] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  conformIdTokenClaims: false, // the ID token carries the scopes' claims (groups), as the API reads them
  findAccount: (ctx, id) => (ACCOUNTS[id] ? {
    accountId: id,
    claims: async () => ({ sub: id, email_verified: true, ...ACCOUNTS[id] }),
  } : undefined),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form) => { ctx.body = `<html><body>${form}</body></html>`; },
      userCodeConfirmSource: async (ctx, form) => { ctx.body = `<html><body>${form}</body></html>`; },
      successSource: async (ctx) => { ctx.body = '<html><body>device-login-done</body></html>'; },
    },
    rpInitiatedLogout: { enabled: true },
  },
});

async function formBody(req) {
  let text = '';
  for await (const chunk of req) text += chunk;
  return new URLSearchParams(text);
}

async function login(ctx, accountId) {
  if (!ACCOUNTS[accountId]) {
    ctx.status = 400;
    ctx.body = `unknown account ${accountId}`;
    return;
  }
  await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId } }, { mergeWithLastSubmission: false });
  ctx.respond = false;
}

async function consent(ctx, interaction) {
  const { prompt: { details }, params, session, grantId } = interaction;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes || {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const result = { consent: { grantId: await grant.save() } };
  await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: true });
  ctx.respond = false;
}

provider.use(async (ctx, next) => {
  const match = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (!match) {
    await next();
    // RFC 8628 §3.2 lets a provider name the polling interval; 1 s keeps the tests short
    if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body) ctx.body = { ...ctx.body, interval: 1 };
    return;
  }
  const interaction = await provider.interactionDetails(ctx.req, ctx.res);
  if (interaction.prompt.name === 'consent') {
    await consent(ctx, interaction);
  } else if (match[2] && ctx.method === 'POST') {
    await login(ctx, (await formBody(ctx.req)).get('login'));
  } else if (interaction.params.login_hint) {
    await login(ctx, interaction.params.login_hint);
  } else {
    ctx.type = 'html';
    ctx.body = `<html><body><form method="post" action="/interaction/${interaction.uid}/login">`
      + '<input name="login"><button type="submit">Sign in</button></form></body></html>';
  }
});

provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider ready at ${issuer}`));
