// A minimal Better Auth server for backend/tests/integration/test_better_auth.py:
// email and password sign-up, the JWT plugin (its JWKS at /api/auth/jwks, tokens from
// GET /api/auth/token and the set-auth-jwt header of get-session), PostgreSQL through
// pg, its tables made by Better Auth's own migrations.
//
// Usage: node server.mjs <port> <postgresql url>
// JWT_ALG picks the signing algorithm (jwks.keyPairConfig.alg); unset, the plugin's
// default (EdDSA, Ed25519).
// Besides Better Auth's routes, POST /test/rotate-key makes a new signing key, as a
// rotation does: the newest key signs from then on, the old one stays published.
import http from "node:http";
import { betterAuth } from "better-auth";
import { getMigrations } from "better-auth/db/migration";
import { toNodeHandler } from "better-auth/node";
import { jwt } from "better-auth/plugins";
import { createJwk } from "better-auth/plugins/jwt";
import pg from "pg";

const [port, databaseUrl] = process.argv.slice(2);
if (!port || !databaseUrl) {
  console.error("usage: node server.mjs <port> <postgresql url>");
  process.exit(2);
}
const baseURL = `http://127.0.0.1:${port}`;
const algorithm = process.env.JWT_ALG;
const jwtOptions = algorithm ? { jwks: { keyPairConfig: { alg: algorithm } } } : {};
const pool = new pg.Pool({ connectionString: databaseUrl, max: 2 });
const options = {
  baseURL,
  secret: "better-auth-test-secret-0123456789abcdef",
  database: pool,
  emailAndPassword: { enabled: true },
  plugins: [jwt(jwtOptions)],
  telemetry: { enabled: false },
};

const { runMigrations } = await getMigrations(options);
await runMigrations();
const auth = betterAuth(options);
const handleAuth = toNodeHandler(auth);

const server = http.createServer((request, response) => {
  if (request.method === "POST" && request.url === "/test/rotate-key") {
    auth.$context
      .then((context) => createJwk({ context }, jwtOptions))
      .then((key) => {
        response.writeHead(200, { "content-type": "application/json" });
        response.end(JSON.stringify({ kid: key.id }));
      })
      .catch((error) => {
        response.writeHead(500, { "content-type": "text/plain" });
        response.end(String(error));
      });
    return;
  }
  handleAuth(request, response);
});

process.on("SIGTERM", () => {
  server.close(() => pool.end().then(() => process.exit(0)));
  server.closeAllConnections();
});

server.listen(Number(port), "127.0.0.1", () => {
  console.log(`better-auth listening on ${baseURL}`);
});
