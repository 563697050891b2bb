import { z } from "zod";
import { formatDuration } from "../duration.ts";
import { ApiError, fieldIssues, validationError, type FieldIssue } from "../errors.ts";
import { microsToUsd } from "../money.ts";
import { VENDORS } from "../vendors/types.ts";
import { parseEndpointRule, type EndpointRule } from "./endpoints.ts";
import { duration, endpoint, MAX_LABEL_LENGTH, STRIPE_ACCOUNT_ID, usd } from "./keys.ts";

/**
 * An issuer token's policy (SPEC §7): the bounds of every key it issues or changes. Default deny
 * in the firewall sense: what a policy names is the most a key may have; a field it leaves out is
 * bounded only by the server's own limits. Stored as the JSON the admin gave, validated again on
 * every check (an invalid stored policy refuses everything rather than nothing).
 */
export function policySchema(maxTtlMs: number) {
  return z.strictObject(
    {
      vendors: z
        .array(z.enum(VENDORS, { error: `policy.vendors entries must be ${VENDORS.join(", ")}` }))
        .min(1, "policy.vendors must not be empty")
        .optional(),
      label_prefix: z
        .string({ error: "policy.label_prefix must be a string" })
        .min(1, "policy.label_prefix must not be empty")
        .max(MAX_LABEL_LENGTH, `policy.label_prefix must be at most ${MAX_LABEL_LENGTH} characters`)
        .refine((p) => p.trim() === p, "policy.label_prefix must not start or end with spaces (labels are trimmed)")
        .optional(),
      // Required: an issuer that can mint any daily cap is an admin for money.
      max_daily_usd_cap: usd("policy.max_daily_usd_cap"),
      max_total_usd_cap: usd("policy.max_total_usd_cap").optional(),
      max_expires_in: duration("policy.max_expires_in", maxTtlMs).optional(),
      allowed_endpoints: z
        .array(endpoint, { error: 'policy.allowed_endpoints must be a list of "METHOD /path"' })
        .min(1, "policy.allowed_endpoints must not be empty")
        .max(100, "policy.allowed_endpoints takes at most 100 entries")
        .optional(),
      // Beyond SPEC §7's list, default deny: a connected account is another business's money, so an
      // issuer may name only the accounts its policy lists (none when it lists none).
      stripe_accounts: z
        .array(z.string().regex(STRIPE_ACCOUNT_ID, "policy.stripe_accounts entries are connected account ids (acct_…)"), {
          error: "policy.stripe_accounts must be a list of connected account ids",
        })
        .max(100, "policy.stripe_accounts takes at most 100 entries")
        .optional(),
    },
    {
      error: (iss) =>
        iss.code === "unrecognized_keys" ? `unknown policy field ${(iss as { keys: string[] }).keys.join(", ")}` : "policy must be a JSON object",
    },
  );
}

export type PolicyInput = z.input<ReturnType<typeof policySchema>>;

/** A policy as checked: money in micro-dollars, durations in ms, rules parsed. */
export interface Policy {
  vendors?: string[];
  labelPrefix?: string;
  maxDailyMicros: number;
  maxTotalMicros?: number;
  maxExpiresInMs?: number;
  allowedEndpoints?: EndpointRule[];
  stripeAccounts?: string[];
}

/** Validates a policy given to POST /tokens (400 naming each bad field, under `policy.`). */
export function parsePolicy(input: unknown, maxTtlMs: number): Policy {
  const r = policySchema(maxTtlMs).safeParse(input);
  if (!r.success) throw validationError(fieldIssues(r.error.issues).map((i) => ({ ...i, field: "policy" + (i.field === "(body)" ? "" : "." + i.field) })));
  const p = r.data;
  return {
    vendors: p.vendors,
    labelPrefix: p.label_prefix,
    maxDailyMicros: p.max_daily_usd_cap,
    maxTotalMicros: p.max_total_usd_cap,
    maxExpiresInMs: p.max_expires_in,
    allowedEndpoints: p.allowed_endpoints?.map((e) => parseEndpointRule(e) as EndpointRule),
    stripeAccounts: p.stripe_accounts,
  };
}

/** What a key would be after an issue or a change: the fields a policy bounds. */
export interface KeyBounds {
  vendor: string;
  agentRunLabel: string;
  dailyCapMicros: number;
  totalCapMicros: number | null;
  /** From now; undefined when a change leaves the expiry alone. */
  expiresInMs?: number;
  allowedEndpoints: readonly string[];
  /** Connected accounts the key may act on with Stripe-Account (issue only). */
  stripeAccounts?: readonly string[];
}

/**
 * SPEC §7 coverage: a key's rule is covered by a policy rule with the same method or `*`, the same
 * number of segments, and each segment equal or `*`. A key's `*` (method or segment) is covered
 * only by a policy `*`: a wildcard can never widen what the policy names.
 */
export function ruleCovers(policyRule: EndpointRule, keyRule: EndpointRule): boolean {
  if (policyRule.method !== "*" && policyRule.method !== keyRule.method) return false;
  if (policyRule.segments.length !== keyRule.segments.length) return false;
  return policyRule.segments.every((seg, i) => seg === "*" || seg === keyRule.segments[i]);
}

/** Every field of `key` outside `policy`, each with why; empty when the key fits. */
export function policyViolations(policy: Policy, key: KeyBounds, fields: ReadonlySet<string> | "all" = "all"): FieldIssue[] {
  const out: FieldIssue[] = [];
  const checks = (f: string) => fields === "all" || fields.has(f);
  if (checks("vendor") && policy.vendors && !policy.vendors.includes(key.vendor)) {
    out.push({ field: "vendor", message: `vendor must be one of ${policy.vendors.join(", ")} for this token` });
  }
  if (checks("agent_run_label") && policy.labelPrefix !== undefined && !key.agentRunLabel.startsWith(policy.labelPrefix)) {
    out.push({ field: "agent_run_label", message: `agent_run_label must start with "${policy.labelPrefix}" for this token` });
  }
  if (checks("daily_usd_cap") && key.dailyCapMicros > policy.maxDailyMicros) {
    out.push({ field: "daily_usd_cap", message: `daily_usd_cap must be at most ${microsToUsd(policy.maxDailyMicros)} for this token` });
  }
  if (checks("total_usd_cap") && policy.maxTotalMicros !== undefined) {
    // No lifetime cap means an unbounded one: refused, not silently capped, so the caller sees the limit.
    if (key.totalCapMicros === null) {
      out.push({ field: "total_usd_cap", message: `total_usd_cap is required for this token (at most ${microsToUsd(policy.maxTotalMicros)})` });
    } else if (key.totalCapMicros > policy.maxTotalMicros) {
      out.push({ field: "total_usd_cap", message: `total_usd_cap must be at most ${microsToUsd(policy.maxTotalMicros)} for this token` });
    }
  }
  if (checks("expires_in") && policy.maxExpiresInMs !== undefined && key.expiresInMs !== undefined && key.expiresInMs > policy.maxExpiresInMs) {
    out.push({ field: "expires_in", message: `expires_in must be at most ${formatDuration(policy.maxExpiresInMs)} for this token` });
  }
  if (checks("allowed_endpoints") && policy.allowedEndpoints) {
    const rules = policy.allowedEndpoints;
    key.allowedEndpoints.forEach((entry, i) => {
      const rule = parseEndpointRule(entry);
      if (typeof rule === "string" || !rules.some((p) => ruleCovers(p, rule))) {
        out.push({ field: `allowed_endpoints.${i}`, message: `"${entry}" is not covered by this token's allowed_endpoints` });
      }
    });
  }
  if (checks("stripe_accounts") && key.stripeAccounts?.length) {
    const listed = policy.stripeAccounts ?? [];
    key.stripeAccounts.forEach((account, i) => {
      if (!listed.includes(account)) {
        out.push({
          field: `stripe_accounts.${i}`,
          message: listed.length ? `"${account}" is not in this token's stripe_accounts` : "this token's policy lists no stripe_accounts, so its keys cannot act on connected accounts",
        });
      }
    });
  }
  return out;
}

export function policyError(issues: FieldIssue[]): ApiError {
  const fields = [...new Set(issues.map((i) => i.field))].join(", ");
  return new ApiError("policy_violation", `Outside this token's policy: ${fields}. Nothing was changed.`, issues);
}
