import { ApiError, type FieldIssue } from "../errors.ts";
import { field } from "./admin-kit.ts";

/**
 * Admin forms are turned into the very bodies the management API takes, so
 * they go through the same validation (KeyService.issue, VendorSecretStore.set).
 * Only the shape changes here: text boxes to numbers, lines to lists.
 */

export const ISSUE_FIELDS = [
  "vendor",
  "agent_run_label",
  "daily_usd_cap",
  "total_usd_cap",
  "allowed_endpoints",
  "expires_in",
  "dedupe_window",
  "metadata",
  "require_idempotency_key",
  "allow_unpriced",
] as const;
export type IssueField = (typeof ISSUE_FIELDS)[number];
export type FormValues = Partial<Record<string, string>>;
export type FieldErrors = Partial<Record<string, string>>;

/** The form as typed, to refill it when it comes back with errors. */
export function issueFormValues(body: unknown): FormValues {
  const values: FormValues = {};
  for (const name of ISSUE_FIELDS) values[name] = field(body, name);
  return values;
}

/**
 * Money as people type it: "$500", "1,250.50", "$ 0.0083". Commas are only
 * accepted as thousands separators ("1,25" stays text, so validation names it).
 * Anything that is not a plain amount goes through as text, so the API names the field.
 */
export function moneyOrText(text: string): number | string {
  const t = text.trim().replace(/^\$\s*/, "").replace(/\s*(USD|usd)$/, "");
  if (!/^\d{1,3}(,\d{3})+(\.\d*)?$|^\d+(\.\d*)?$|^\.\d+$/.test(t)) return text;
  const n = Number(t.replace(/,/g, ""));
  return Number.isFinite(n) ? n : text;
}

export function issueBodyFromForm(v: FormValues): { body: Record<string, unknown>; errors: FieldErrors } {
  const body: Record<string, unknown> = {};
  const errors: FieldErrors = {};
  const text = (name: IssueField) => v[name]?.trim() || undefined;
  if (text("vendor")) body.vendor = text("vendor");
  if (v.agent_run_label !== undefined) body.agent_run_label = v.agent_run_label;
  if (text("daily_usd_cap")) body.daily_usd_cap = moneyOrText(text("daily_usd_cap")!);
  if (text("total_usd_cap")) body.total_usd_cap = moneyOrText(text("total_usd_cap")!);
  body.allowed_endpoints = (v.allowed_endpoints ?? "")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter(Boolean);
  if (text("expires_in")) body.expires_in = text("expires_in");
  if (text("dedupe_window")) body.dedupe_window = text("dedupe_window");
  if (text("metadata")) {
    try {
      body.metadata = JSON.parse(text("metadata")!);
    } catch {
      errors.metadata = 'metadata must be a JSON object like {"team": "billing"}';
    }
  }
  // Unchecked boxes are simply absent: absent means false, as in the API.
  if (v.require_idempotency_key) body.require_idempotency_key = true;
  if (v.allow_unpriced) body.allow_unpriced = true;
  return { body, errors };
}

/**
 * ApiError details ({field, message}[]) as one message per form field:
 * "allowed_endpoints.1" belongs to the allowed_endpoints box, as line 2.
 */
export function fieldErrorsOf(e: ApiError): FieldErrors {
  const errors: FieldErrors = {};
  const issues = Array.isArray(e.details) ? (e.details as FieldIssue[]) : [];
  for (const issue of issues) {
    const [name = "(body)", index] = issue.field.split(".");
    const message = index !== undefined && /^\d+$/.test(index) ? `Line ${Number(index) + 1}: ${issue.message}` : issue.message;
    errors[name] = errors[name] ? `${errors[name]} ${message}` : message;
  }
  if (!issues.length) errors["(body)"] = e.message;
  return errors;
}

/** A vendor's secret fields from the rotate form; blank boxes are left out so validation names them. */
export function secretFromForm(body: unknown, fields: readonly string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of fields) {
    const value = field(body, name);
    if (value !== undefined && value.trim() !== "") out[name] = value;
  }
  return out;
}

/**
 * `<input type="datetime-local">` sends "2026-11-22T14:05" with no zone; the
 * admin pages label those boxes UTC, so read them as UTC rather than as the
 * server's local time. Anything else goes through as typed.
 */
export function utcFromLocalInput(text: string): string {
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$/.test(text)) return `${text}:00Z`;
  if (/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?$/.test(text)) return `${text}Z`;
  return text;
}
