import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
// The test suite's loopback fake of Stripe, Twilio and Resend: one fake, so the demo shows
// exactly what the tests prove. `bun build --compile` bundles it into the binary.
import { startFakeVendor } from "../test/fake-vendor.ts";
import { createApp } from "./app.ts";
import { loadConfig } from "./config.ts";
import { randomToken } from "./domain/crypto.ts";
import { utcDay } from "./domain/time.ts";
import { createServices, MAX_PROXY_BODY_BYTES } from "./services.ts";

/**
 * `keybrake demo` / `npm run demo`: Keybrake in front of a local fake vendor,
 * with a few runs already driven through the real proxy (a fan-out that hits
 * its cap, a revoked run, denials), so every admin page has something true to
 * show. Nothing leaves the machine; the data directory is temporary.
 */

export interface Demo {
  url: string;
  adminUrl: string;
  token: string;
  dataDir: string;
  labels: { fanOut: string; revoked: string };
  stop(): Promise<void>;
}

const SEND_SMS = "POST /2010-04-01/Accounts/*/Messages.json";
const PLACEHOLDER_SID = "AC" + "0".repeat(32);

export async function startDemo(opts: { port?: number; host?: string; log?: (line: string) => void } = {}): Promise<Demo> {
  const log = opts.log ?? (() => {});
  const fake = await startFakeVendor();
  const dataDir = mkdtempSync(join(tmpdir(), "keybrake-demo-"));
  const token = "kbt_demo_" + randomToken(24);
  const host = opts.host ?? "127.0.0.1";
  const config = loadConfig({
    KEYBRAKE_DATA_DIR: dataDir,
    KEYBRAKE_ADMIN_TOKEN: token,
    KEYBRAKE_HOST: host,
    KEYBRAKE_PORT: String(opts.port ?? 8080),
    KEYBRAKE_LOG: "silent",
    KEYBRAKE_STRIPE_BASE_URL: fake.url,
    KEYBRAKE_TWILIO_BASE_URL: fake.url,
    KEYBRAKE_RESEND_BASE_URL: fake.url,
    KEYBRAKE_STRIPE_SECRET_KEY: fake.credentials.stripe,
    KEYBRAKE_TWILIO_ACCOUNT_SID: fake.credentials.twilioSid,
    KEYBRAKE_TWILIO_AUTH_TOKEN: fake.credentials.twilioToken,
    KEYBRAKE_RESEND_API_KEY: fake.credentials.resend,
  });
  const services = await createServices(config);
  let port = 0;
  const app = createApp(services, { proxyBaseUrl: () => `http://${host === "0.0.0.0" ? "localhost" : host}:${port}` });
  try {
    app.listen({ port: config.port, hostname: host, reusePort: false, maxRequestBodySize: MAX_PROXY_BODY_BYTES + 1024 });
  } catch (e) {
    await fake.stop();
    rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`cannot listen on ${host}:${config.port} (${(e as Error).message}); set KEYBRAKE_PORT to a free port`);
  }
  port = app.server!.port!;
  const url = `http://${host === "0.0.0.0" ? "localhost" : host}:${port}`;

  const api = async (method: string, path: string, body?: unknown) => {
    const res = await fetch(url + path, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = (await res.json()) as Record<string, any>;
    if (!res.ok) throw new Error(`demo: ${method} ${path} → ${res.status} ${JSON.stringify(json)}`);
    return json;
  };
  const issue = (body: Record<string, unknown>) => api("POST", "/vault/keys", { expires_in: "8h", ...body }) as Promise<{ key_id: string; vault_key: string }>;
  const stripePay = (vaultKey: string, amount: number, path = "/stripe/v1/payment_intents") =>
    fetch(url + path, {
      method: "POST",
      headers: { authorization: `Bearer ${vaultKey}`, "content-type": "application/x-www-form-urlencoded" },
      body: `amount=${amount}&currency=usd`,
    }).then((r) => r.status);
  const sms = (vaultKey: string, body: string) =>
    fetch(`${url}/twilio/2010-04-01/Accounts/${PLACEHOLDER_SID}/Messages.json`, {
      method: "POST",
      headers: { authorization: "Basic " + btoa(`${PLACEHOLDER_SID}:${vaultKey}`), "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ To: "+15005550006", From: "+15005550001", Body: body }).toString(),
    }).then((r) => r.status);
  const email = (vaultKey: string, to: string[], path = "/resend/emails") =>
    fetch(url + path, {
      method: "POST",
      headers: { authorization: `Bearer ${vaultKey}`, "content-type": "application/json" },
      body: JSON.stringify({ from: "news@example.com", to, subject: "November digest", html: "<p>Hello</p>" }),
    }).then((r) => r.status);

  const today = utcDay(Date.now());
  const labels = {
    fanOut: `airflow-billing/scheduled__${today}`,
    done: `airflow-billing/manual__${today}T01-00`,
    revoked: `argo-refunds/run-42`,
    sms: `temporal-onboarding/wf-8812`,
    news: `kestra-newsletter/${today}`,
    reader: `windmill-reports/f-77`,
  };

  // 1. A billing fan-out: 30 parallel $29 charges against a $500 budget. 17 fit; the rest hit the cap.
  const fan = await issue({ vendor: "stripe", daily_usd_cap: 500, total_usd_cap: 500, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: labels.fanOut });
  const fanStatuses = await Promise.all(Array.from({ length: 30 }, () => stripePay(fan.vault_key, 2900)));
  // 2. A small run that finished within its cap.
  const done = await issue({ vendor: "stripe", daily_usd_cap: 200, total_usd_cap: 200, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: labels.done });
  for (const amount of [4900, 12900, 1900]) await stripePay(done.vault_key, amount);
  // 3. A refunds run with two keys: revoked mid-way, so its next calls are refused.
  const refundA = await issue({ vendor: "stripe", daily_usd_cap: 300, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: labels.revoked });
  const refundB = await issue({ vendor: "stripe", daily_usd_cap: 300, allowed_endpoints: ["POST /v1/payment_intents"], agent_run_label: labels.revoked });
  await stripePay(refundA.vault_key, 7500);
  await stripePay(refundB.vault_key, 2500);
  await api("POST", "/vault/keys/revoke", { agent_run_label: labels.revoked });
  await stripePay(refundA.vault_key, 7500);
  await stripePay(refundB.vault_key, 2500);
  // 4. Onboarding SMS through Twilio (sub-cent money), one message per new customer.
  const smsKey = await issue({ vendor: "twilio", daily_usd_cap: 1, total_usd_cap: 1, allowed_endpoints: [SEND_SMS], agent_run_label: labels.sms });
  for (const text of ["Welcome aboard!", "Your code is 442911", "Reminder: finish setting up your account", "😀 Thanks for joining!"]) await sms(smsKey.vault_key, text);
  // 5. A newsletter through Resend, and a task that tries an endpoint its key does not allow.
  const news = await issue({ vendor: "resend", daily_usd_cap: 0.05, total_usd_cap: 0.05, allowed_endpoints: ["POST /emails"], agent_run_label: labels.news });
  await email(news.vault_key, ["ada@example.com", "grace@example.com"]);
  await email(news.vault_key, ["linus@example.com"]);
  await email(news.vault_key, ["ken@example.com"], "/resend/domains");
  // 6. A read-only reporting key that tries to charge: denied.
  const reader = await issue({ vendor: "stripe", daily_usd_cap: 0, allowed_endpoints: ["GET /v1/payment_intents"], agent_run_label: labels.reader });
  await stripePay(reader.vault_key, 1000);
  // 7. A leaked or mistyped key.
  await stripePay("vk_not_a_real_key_000000000000000000000000000", 2900);

  const forwarded = fanStatuses.filter((s) => s === 200).length;
  log(`Seeded: ${labels.fanOut} charged ${forwarded} of 30 before its $500 cap (${30 - forwarded} refused with 429), ${labels.revoked} revoked, a few denials.`);

  return {
    url,
    adminUrl: `${url}/admin`,
    token,
    dataDir,
    labels,
    async stop() {
      await app.stop(true);
      await services.close();
      await fake.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** The CLI entry: start, print how to get in, run until Ctrl-C. */
export async function runDemo(env: Record<string, string | undefined> = process.env): Promise<void> {
  const port = env.KEYBRAKE_PORT ? Number(env.KEYBRAKE_PORT) : 8080;
  const demo = await startDemo({ port, host: env.KEYBRAKE_HOST ?? "127.0.0.1", log: (l) => console.log(l) });
  console.log(`
Keybrake demo is running, in front of a local fake Stripe, Twilio and Resend (nothing leaves this machine).

  Admin pages:       ${demo.adminUrl}
  Management token:  ${demo.token}

Sign in with the token, then try the 2 a.m. drill: on Keys, type "airflow-billing/*", see what the run
spent against its cap, press "Revoke run", and open its calls in the Audit log.

Proxy base URLs:   ${demo.url}/stripe   ${demo.url}/twilio   ${demo.url}/resend
Data (temporary):  ${demo.dataDir}
Press Ctrl-C to stop; the demo data is deleted.
`);
  const stop = async () => {
    await demo.stop();
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}

if (import.meta.main) {
  runDemo().catch((e) => {
    console.error(`keybrake demo: ${(e as Error).message}`);
    process.exit(2);
  });
}
