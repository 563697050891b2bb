import { microsToDecimalString } from "./money.ts";

/**
 * Operator log (SPEC §1 KEYBRAKE_LOG). `json`: one JSON line per proxied call and per
 * management action; `info`: a short human line for what an operator must notice (cap hits,
 * upstream errors, revocations, rotations, errors); `silent`: nothing. Callers pass facts, never
 * a secret, a vault key or a body: nothing here can leak what it was not given.
 */
export type LogMode = "info" | "json" | "silent";

/** One proxied call, as its audit row ends. */
export interface CallLogEntry {
  key_id: string | null;
  agent_run_label: string | null;
  vendor: string;
  method: string;
  path: string;
  outcome: string;
  /** What the client received: the vendor's status, or Keybrake's own refusal status. */
  status: number | null;
  error_code: string | null;
  cost_micros: number;
  latency_ms: number;
}

/** One management action or alert (the same facts as its event, SPEC §7). */
export interface ActionLogEntry {
  type: string;
  actor: string | null;
  target: string | null;
  data?: Record<string, unknown>;
}

export interface Logger {
  call(entry: CallLogEntry): void;
  action(entry: ActionLogEntry): void;
  /** A line for the operator in `info` mode (start-up, shutdown); in `json` mode a `{"msg"}` line. */
  info(message: string): void;
  error(message: string): void;
}

/** Text a client chose (a run label, a token name) is JSON-quoted unless plain, so it can never forge a line. */
function quoted(text: string): string {
  return /^[\w.:/@()-]+$/.test(text) ? text : JSON.stringify(text);
}

/** Calls that an operator watching `info` lines should see; everything else is in the audit log. */
const NOTABLE_OUTCOMES = new Set(["cap_hit", "upstream_error"]);

export function createLogger(mode: LogMode, write: (line: string) => void = (l) => process.stdout.write(l + "\n"), writeError: (line: string) => void = (l) => process.stderr.write(l + "\n")): Logger {
  const time = () => new Date().toISOString();
  if (mode === "silent") return { call() {}, action() {}, info() {}, error() {} };
  if (mode === "json") {
    return {
      call: (e) => write(JSON.stringify({ time: time(), kind: "call", ...e, cost_usd: microsToDecimalString(e.cost_micros), cost_micros: undefined })),
      action: (e) => write(JSON.stringify({ time: time(), kind: "action", ...e })),
      info: (msg) => write(JSON.stringify({ time: time(), kind: "info", msg })),
      error: (msg) => writeError(JSON.stringify({ time: time(), kind: "error", msg })),
    };
  }
  return {
    call(e) {
      if (!NOTABLE_OUTCOMES.has(e.outcome)) return;
      write(`${time()} ${e.outcome} ${e.vendor} ${e.method} ${e.path} key=${e.key_id ?? "-"} label=${JSON.stringify(e.agent_run_label ?? "")} status=${e.status ?? "-"} ${e.error_code ?? ""}`.trimEnd());
    },
    action(e) {
      // Scalar facts only (amounts, labels, the source of a secret).
      const facts = Object.entries(e.data ?? {})
        .filter(([, v]) => v === null || ["string", "number", "boolean"].includes(typeof v))
        .map(([k, v]) => `${k}=${typeof v === "string" ? quoted(v) : v}`);
      write([time(), e.type, `target=${e.target === null ? "-" : quoted(e.target)}`, `by=${e.actor === null ? "keybrake" : quoted(e.actor)}`, ...facts].join(" "));
    },
    info: (msg) => write(msg),
    error: (msg) => writeError(msg),
  };
}
