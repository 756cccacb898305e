// A real OpenID Connect provider (npm oidc-provider 9) for the gateway's oauth2 tests.
// Clients get access tokens by client credentials; resource indicators make them JWTs whose aud
// is the resource asked for. Each start signs with a new RSA key of kid OIDC_KID (a restart with
// another kid is a key rotation). Usage: OIDC_PORT=N OIDC_KID=K node server.mjs
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;
const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const key = { ...privateKey.export({ format: 'jwk' }), kid: process.env.OIDC_KID, alg: 'RS256', use: 'sig' };
// the gateway's audience, and another resource server's
const RESOURCES = ['https://api.nubis.test', 'https://other.nubis.test'];
const client = (id) => ({
  client_id: id, client_secret: 'test-secret', grant_types: ['client_credentials'], redirect_uris: [], response_types: [],
});

const provider = new Provider(issuer, {
  clients: [client('gateway-tests'), client('short-lived')],
  jwks: { keys: [key] },
  cookies: { keys: ['nubis-test-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: (ctx, resource, asking) => {
        if (!RESOURCES.includes(resource)) throw new Provider.errors.InvalidTarget();
        // the short-lived client's tokens expire after a second (the expiry test)
        const accessTokenTTL = asking.clientId === 'short-lived' ? 1 : 300;
        return { scope: 'api', audience: resource, accessTokenTTL, accessTokenFormat: 'jwt' };
      },
    },
  },
});
provider.listen(port, '127.0.0.1', () => console.log(`oidc-provider ready at ${issuer}`));
