import { and, eq, gte, lt, type SQL, type SQLWrapper } from "drizzle-orm";

/**
 * A `label` filter as SPEC §2 defines it: exact, or a prefix match when it ends in `*`
 * (`airflow-billing/*`). A prefix is matched as the half-open range [prefix, next(prefix)),
 * where next() bumps the last code point: with SQLite's BINARY collation (UTF-8 byte order =
 * code point order) that range holds exactly the strings that start with the prefix, and it
 * is served by the (label, id) indexes. On PostgreSQL the label columns are declared COLLATE "C"
 * (migrations/pg/0002 and 0003) for the same reason: under a linguistic default collation
 * (en_US, ICU) the range would also hold labels that do not start with the prefix.
 */
export function labelCondition(column: SQLWrapper, label: string): SQL | undefined {
  if (!label.endsWith("*")) return eq(column, label);
  const prefix = label.slice(0, -1);
  if (prefix === "") return undefined; // "*" alone: every label
  const upper = nextString(prefix);
  return upper === null ? gte(column, prefix) : and(gte(column, prefix), lt(column, upper));
}

/** Whether `label` passes a `label` filter, for code that filters in memory. */
export function labelMatches(filter: string, label: string): boolean {
  return filter.endsWith("*") ? label.startsWith(filter.slice(0, -1)) : label === filter;
}

/** The smallest string greater than every string that starts with `prefix`; null if there is none. */
function nextString(prefix: string): string | null {
  const points = Array.from(prefix);
  while (points.length > 0) {
    let cp = points.pop()!.codePointAt(0)! + 1;
    if (cp === 0xd800) cp = 0xe000; // skip the surrogate range, which UTF-8 cannot hold
    if (cp <= 0x10ffff) return points.join("") + String.fromCodePoint(cp);
  }
  return null;
}
