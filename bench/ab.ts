/**
 * Before/after in ONE interleaved run: two Keybrake builds, each on an empty data
 * dir and on one seeded with a big audit log, against the Bun floor, the nginx
 * fake vendor and wrk on the other core. Rounds are round-robin with the start
 * rotated, so every target sees the same machine noise; medians and spread are
 * printed, and every Keybrake run is checked (nothing left reserved, spent =
 * answers × $29 within one call per connection, no non-2xx).
 *
 *   bun bench/ab.ts --before "/tmp/kb-before serve" --after "dist/keybrake serve"
 *
 * Knobs: AB_ROUNDS (5), AB_SECONDS (6), AB_ROWS (1,000,000), BENCH_PORT_BASE.
 * Results: bench/results/ab.json and a Markdown table on stdout.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { issueKey, keybrakeEnv, makeTempDir, median, memoryMb, PI_MICROS, RESULTS_DIR, ROOT, seedAuditRows, settledView, startServer, usdToMicros, wrk, writeResult, type Server } from "./lib.ts";

const arg = (name: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i < 0 ? undefined : process.argv[i + 1];
};
const BEFORE = (arg("before") ?? "").split(/\s+/).filter(Boolean);
const AFTER = (arg("after") ?? `${join(ROOT, "dist", "keybrake")} serve`).split(/\s+/).filter(Boolean);
const ROUNDS = Number(process.env.AB_ROUNDS ?? 5);
const SECONDS = Number(process.env.AB_SECONDS ?? 6);
const ROWS = Number(process.env.AB_ROWS ?? 1_000_000);
const BASE = Number(process.env.BENCH_PORT_BASE ?? 18400) + 30;
const CONNS = [1, 32];

interface Target {
  id: string;
  url: string;
  server?: Server;
  keybrake: boolean;
}
interface Sample {
  round: number;
  conns: number;
  target: string;
  rps: number;
  p50: number;
  p99: number;
  ok: boolean;
}

async function main() {
  if (BEFORE.length === 0) throw new Error('usage: bun bench/ab.ts --before "CMD serve" [--after "CMD serve"]');
  const runDir = makeTempDir("keybrake-ab-");
  mkdirSync(join(runDir, "nginx-vendor-tmp"));
  const vendorPort = BASE + 1;
  const conf = readFileSync(join(ROOT, "bench", "nginx-vendor.conf"), "utf8").replaceAll("@RUN_DIR@", runDir).replaceAll("@VENDOR_PORT@", String(vendorPort));
  writeFileSync(join(runDir, "nginx-vendor.conf"), conf);
  const vendor = `http://127.0.0.1:${vendorPort}`;
  const nginx = await startServer("nginx-vendor", ["nginx", "-p", runDir, "-c", join(runDir, "nginx-vendor.conf")], vendorPort, {}, "/__nginx_status");
  const bun = join(ROOT, "node_modules", ".bin", "bun");
  const floor = await startServer("bun-floor", [bun, join(ROOT, "bench", "bun-proxy.ts"), String(BASE + 2), vendor], BASE + 2, {}, "/");

  // One seeded file, copied: both builds start from the same bytes (the newer one migrates it on start).
  const seedDir = join(runDir, "seed");
  mkdirSync(seedDir);
  const migrator = await startServer("migrate", BEFORE, BASE + 9, keybrakeEnv(BASE + 9, seedDir, vendor), "/healthz");
  await migrator.stop();
  const seconds = seedAuditRows(join(seedDir, "keybrake.db"), ROWS);
  console.log(`seeded ${ROWS} audit rows in ${seconds.toFixed(1)} s`);

  const targets: Target[] = [{ id: "bun-floor", url: floor.url, keybrake: false }];
  let port = BASE + 3;
  for (const [name, cmd] of [["before", BEFORE], ["after", AFTER]] as const) {
    for (const rows of [0, ROWS]) {
      const dir = join(runDir, `${name}-${rows}`);
      mkdirSync(dir);
      if (rows > 0) for (const f of ["keybrake.db", "master.key"]) copyFileSync(join(seedDir, f), join(dir, f));
      const p = port++;
      const server = await startServer(`${name}-${rows}`, cmd, p, keybrakeEnv(p, dir, vendor), "/healthz");
      targets.push({ id: `${name}@${rows === 0 ? "0" : `${ROWS / 1e6}M`}`, url: server.url, server, keybrake: true });
    }
  }

  const samples: Sample[] = [];
  for (let round = 0; round <= ROUNDS; round++) {
    for (const conns of CONNS) {
      const order = targets.map((_, i) => targets[(i + round) % targets.length]!);
      for (const t of order) {
        const key = t.keybrake ? await issueKey(t.url, 1_000_000_000, `ab/c${conns}/r${round}`) : { key_id: "", vault_key: "vk_unused" };
        const w = await wrk(t.url, conns, round === 0 ? 2 : SECONDS, key.vault_key);
        let ok = w.non2xx === 0 && w.errors === 0;
        if (t.keybrake) {
          const v = await settledView(t.url, key.key_id);
          const calls = usdToMicros(v.spent_total_usd) / PI_MICROS;
          ok &&= v.reserved_usd === 0 && calls >= w.ok2xx && calls <= w.ok2xx + conns;
          if (!ok) console.error(`LEDGER FAIL ${t.id} c${conns} r${round}: reserved ${v.reserved_usd}, spent calls ${calls}, wrk 2xx ${w.ok2xx}, non2xx ${w.non2xx}`);
        }
        if (round > 0) samples.push({ round, conns, target: t.id, rps: w.rps, p50: w.p50, p99: w.p99, ok });
        console.log(`r${round} c${conns} ${t.id.padEnd(14)} ${w.rps.toFixed(0).padStart(6)} rps  p50 ${w.p50} µs  p99 ${w.p99} µs${ok ? "" : "  FAIL"}`);
      }
    }
  }

  const rss = Object.fromEntries(targets.filter((t) => t.server).map((t) => [t.id, memoryMb(t.server!.pid)]));
  writeResult("ab", { rows: ROWS, rounds: ROUNDS, seconds: SECONDS, samples, rss });
  // Per-round ratios to the floor (same round, same neighbours), then median and spread over rounds.
  const lines = ["| target | conns | RPS | ÷ floor (median, min–max) | p50 µs | p50 − floor µs | p99 µs | p99 ÷ floor |", "|---|---:|---:|---:|---:|---:|---:|---:|"];
  for (const conns of CONNS) {
    for (const t of targets) {
      const mine = samples.filter((s) => s.conns === conns && s.target === t.id);
      const fl = (r: number) => samples.find((s) => s.conns === conns && s.target === "bun-floor" && s.round === r)!;
      const ratios = mine.map((s) => s.rps / fl(s.round).rps);
      const dp50 = mine.map((s) => s.p50 - fl(s.round).p50);
      const rp99 = mine.map((s) => s.p99 / fl(s.round).p99);
      lines.push(
        `| ${t.id} | ${conns} | ${median(mine.map((s) => s.rps)).toFixed(0)} | ${median(ratios).toFixed(2)} (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)}) | ${median(mine.map((s) => s.p50))} | ${median(dp50)} | ${median(mine.map((s) => s.p99))} | ${median(rp99).toFixed(2)} |`,
      );
    }
  }
  lines.push("", `RSS MB (now / peak): ${Object.entries(rss).map(([k, v]) => `${k} ${v.rss.toFixed(0)}/${v.peak.toFixed(0)}`).join(", ")}`);
  const failed = samples.filter((s) => !s.ok).length;
  lines.push(`ledger checks: ${failed === 0 ? "PASS" : `FAIL (${failed} runs)`}`);
  console.log("\n" + lines.join("\n"));
  writeFileSync(join(RESULTS_DIR, "ab.md"), lines.join("\n") + "\n");
  for (const t of targets) await t.server?.stop();
  await floor.stop();
  await nginx.stop();
  process.exit(failed === 0 ? 0 : 1);
}

await main();
