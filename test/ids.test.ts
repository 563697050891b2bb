import { expect, test } from "bun:test";
import { newId } from "../src/ids.ts";

test("ids minted in one millisecond, or while the clock steps back, still sort in creation order", () => {
  const ids = [newId("key", 5_000), ...Array.from({ length: 2000 }, () => newId("key", 5_000)), newId("key", 4_000), newId("key", 6_000)];
  expect(new Set(ids).size).toBe(ids.length);
  expect([...ids].sort()).toEqual(ids);
  expect(ids.every((id) => /^key_[0-9a-hjkmnp-tv-z]{26}$/.test(id))).toBe(true);
});
