import { randomBytes } from "node:crypto";

const CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz";
const RANDOM_CHARS = 16;

let lastTime = -1;
let lastRandom: number[] = [];

/**
 * Time-ordered ids (`key_01hx…`): 10 base32 chars of milliseconds, then 16 of
 * randomness. Monotonic within a process (as ULIDs are): an id minted in the same
 * millisecond as the one before it, or while the clock stepped back, takes the
 * previous time and randomness plus one, so sorting by id is sorting by creation —
 * which the "newest first" lists and their cursors rely on.
 */
export function newId(prefix: string, now = Date.now()): string {
  if (now > lastTime) {
    lastTime = now;
    lastRandom = Array.from(randomBytes(RANDOM_CHARS), (b) => b % 32);
  } else {
    increment(lastRandom);
  }
  let time = "";
  let t = lastTime;
  for (let i = 0; i < 10; i++) {
    time = CROCKFORD[t % 32] + time;
    t = Math.floor(t / 32);
  }
  return `${prefix}_${time}${lastRandom.map((d) => CROCKFORD[d]).join("")}`;
}

/** Adds one to a base-32 number (most significant digit first); 80 bits of randomness do not overflow in a millisecond. */
function increment(digits: number[]): void {
  for (let i = digits.length - 1; i >= 0; i--) {
    if (digits[i]! < 31) {
      digits[i]!++;
      return;
    }
    digits[i] = 0;
  }
}
