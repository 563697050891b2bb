/** Durations as users write them: "500ms", "30s", "15m", "4h", "7d". */
const UNIT_MS = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;

export function parseDurationMs(text: string): number | null {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(text.trim());
  if (!m) return null;
  const ms = Number(m[1]) * UNIT_MS[m[2] as keyof typeof UNIT_MS];
  return Number.isSafeInteger(ms) ? ms : null;
}

const UNITS: [string, number][] = [
  ["d", 86_400_000],
  ["h", 3_600_000],
  ["m", 60_000],
  ["s", 1000],
  ["ms", 1],
];

/**
 * A duration said back to a user: in the unit they typed where it is exact ("40d" → "30d"),
 * else in the largest unit that says it exactly ("2592000s" reads as "30d").
 */
export function formatDuration(ms: number, typed?: string): string {
  const unit = /^\s*\d+\s*(ms|s|m|h|d)\s*$/.exec(typed ?? "")?.[1];
  const own = UNITS.find(([u]) => u === unit);
  if (own && ms % own[1] === 0) return `${ms / own[1]}${own[0]}`;
  const [u, size] = UNITS.find(([, size]) => ms % size === 0) ?? ["ms", 1];
  return `${ms / size}${u}`;
}
