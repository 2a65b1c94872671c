// Real external IdP for the end-to-end tests: panva/oidc-provider v9 on loopback.
// Adapted from the team recipe (shared/recipes/oidc-provider-server.mjs); oidc-provider is MIT.
//
// env: PORT (required), RESOURCE (default audience), KID (signing key id, default "k1"),
//      PRIVATE_KEY_OUT / PUBLIC_KEY_OUT: where to write the signing key as PEM, so tests can
//      forge tokens with the IdP's own key (expired, wrong audience, ...). Test-only.
//      GATEWAY_JWKS: the gateway's JWKS URL; enables an RFC 8693 token-exchange grant that
//      accepts the gateway's identity assertion as subject_token and answers with an opaque
//      token "exchanged.<sub>.<uuid>" (oidc-provider has no built-in token exchange).
// Prints "listening <issuer>" once ready.
import crypto from 'node:crypto';
import fs from 'node:fs';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const PORT = Number(process.env.PORT);
const ISSUER = `http://127.0.0.1:${PORT}`;
const RESOURCE = process.env.RESOURCE || 'http://127.0.0.1:8080/mcp';
const KID = process.env.KID || 'k1';
const SCOPES = 'mcp:tools mcp:resources mcp:prompts';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';

const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
if (process.env.PRIVATE_KEY_OUT) fs.writeFileSync(process.env.PRIVATE_KEY_OUT, privateKey.export({ type: 'pkcs8', format: 'pem' }));
if (process.env.PUBLIC_KEY_OUT) fs.writeFileSync(process.env.PUBLIC_KEY_OUT, publicKey.export({ type: 'spki', format: 'pem' }));
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: KID, alg: 'RS256', use: 'sig' };

const provider = new Provider(ISSUER, {
  jwks: { keys: [jwk] },
  clients: [
    { client_id: 'gateway-svc', client_secret: 'svc-secret',
      grant_types: ['client_credentials', ...(process.env.GATEWAY_JWKS ? [TOKEN_EXCHANGE] : [])],
      response_types: [], redirect_uris: [], scope: SCOPES },
  ],
  scopes: SCOPES.split(' '),
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => ({
        scope: SCOPES, audience: resourceIndicator, accessTokenTTL: 600,
        accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
});
if (process.env.GATEWAY_JWKS) {
  const gatewayKeys = jose.createRemoteJWKSet(new URL(process.env.GATEWAY_JWKS));
  provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
    const { subject_token: subjectToken, subject_token_type: subjectType } = ctx.oidc.params;
    if (subjectType !== 'urn:ietf:params:oauth:token-type:jwt') {
      ctx.status = 400; ctx.body = { error: 'invalid_request', error_description: 'subject_token_type' }; return;
    }
    try {
      const { payload } = await jose.jwtVerify(subjectToken, gatewayKeys, { typ: 'portcullis-identity+jwt' });
      ctx.body = { access_token: `exchanged.${payload.sub}.${crypto.randomUUID()}`, token_type: 'Bearer',
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token', expires_in: 300 };
    } catch (e) {
      ctx.status = 400; ctx.body = { error: 'invalid_grant', error_description: String(e.code || e.message) };
    }
  }, ['subject_token', 'subject_token_type', 'requested_token_type', 'resource', 'audience', 'scope']);
}
provider.on('server_error', (ctx, error) => console.error('server_error', error));
provider.proxy = false;
provider.listen(PORT, '127.0.0.1', () => console.log(`listening ${ISSUER}`));
