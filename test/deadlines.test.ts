import { expect, test } from "bun:test";
import { Deadlines } from "../src/proxy/deadlines.ts";

test("one shared timer: a passed deadline aborts with TimeoutError, a finished call's never does", async () => {
  const deadlines = new Deadlines(5);
  const late = deadlines.start(1);
  const finished = deadlines.start(1);
  finished.done();
  const later = deadlines.start(60_000);
  for (let i = 0; i < 400 && !late.signal.aborted; i++) await Bun.sleep(5); // bounded wait, no threshold
  expect(late.signal.aborted).toBe(true);
  expect((late.signal.reason as Error).name).toBe("TimeoutError");
  expect(finished.signal.aborted).toBe(false);
  expect(later.signal.aborted).toBe(false);
  later.done();
});
