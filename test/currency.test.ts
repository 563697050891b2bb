import { describe, expect, test } from "bun:test";
import {
  DEFAULT_USD_MICROS_PER_MAJOR_UNIT,
  currencyExponent,
  minorUnitsToUsdMicros,
} from "../src/vendors/currency.ts";

describe("currencyExponent", () => {
  test("zero-decimal currencies", () => {
    for (const c of ["bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf"]) {
      expect(currencyExponent(c)).toBe(0);
    }
  });

  test("three-decimal currencies", () => {
    for (const c of ["bhd", "jod", "kwd", "omr", "tnd"]) expect(currencyExponent(c)).toBe(3);
  });

  test("everything else, including Stripe's ISK/HUF/TWD special cases, is two-decimal", () => {
    for (const c of ["usd", "eur", "gbp", "isk", "huf", "twd", "xyz"]) expect(currencyExponent(c)).toBe(2);
  });

  test("is case-insensitive", () => {
    expect(currencyExponent("JPY")).toBe(0);
    expect(currencyExponent("Kwd")).toBe(3);
    expect(currencyExponent("USD")).toBe(2);
  });
});

describe("minorUnitsToUsdMicros", () => {
  test("two-decimal: 2900 usd cents → $29", () => {
    expect(minorUnitsToUsdMicros(2900, "usd", 1_000_000)).toBe(29_000_000);
  });

  test("zero-decimal: 500 JPY at 6_700 micros/JPY", () => {
    expect(minorUnitsToUsdMicros(500, "jpy", 6_700)).toBe(3_350_000);
  });

  test("three-decimal: 1234 fils = 1.234 KWD at 3_250_000", () => {
    expect(minorUnitsToUsdMicros(1234, "kwd", 3_250_000)).toBe(4_010_500);
  });

  test("rounds up, never under-reserving", () => {
    // 0.01 EUR × 1_080_001 = 10_800.01 micros
    expect(minorUnitsToUsdMicros(1, "eur", 1_080_001)).toBe(10_801);
    expect(minorUnitsToUsdMicros(1, "kwd", 1)).toBe(1);
  });

  test("exact results are not rounded", () => {
    expect(minorUnitsToUsdMicros(1, "eur", 1_080_000)).toBe(10_800);
    expect(minorUnitsToUsdMicros(0, "usd", 1_000_000)).toBe(0);
  });

  test("is case-insensitive", () => {
    expect(minorUnitsToUsdMicros(500, "JPY", 6_700)).toBe(3_350_000);
  });

  test("stays exact where amount × rate exceeds 2^53", () => {
    // The product is 123_456_912_469_789_013 (> 2^53); float math loses the
    // trailing 13 and rounds to ...890, under-reserving by one micro.
    expect(minorUnitsToUsdMicros(123_456_789_013, "usd", 1_000_001)).toBe(1_234_569_124_697_891);
  });

  test("rejects non-integer or negative inputs and unsafe results", () => {
    expect(() => minorUnitsToUsdMicros(1.5, "usd", 1_000_000)).toThrow(RangeError);
    expect(() => minorUnitsToUsdMicros(-1, "usd", 1_000_000)).toThrow(RangeError);
    expect(() => minorUnitsToUsdMicros(100, "usd", 0)).toThrow(RangeError);
    expect(() => minorUnitsToUsdMicros(100, "usd", 1.5)).toThrow(RangeError);
    expect(() => minorUnitsToUsdMicros(Number.MAX_SAFE_INTEGER, "jpy", 6_700)).toThrow(RangeError);
  });
});

describe("DEFAULT_USD_MICROS_PER_MAJOR_UNIT", () => {
  test("usd is exactly one dollar", () => {
    expect(DEFAULT_USD_MICROS_PER_MAJOR_UNIT.usd).toBe(1_000_000);
  });

  test("covers the expected currencies with positive integer rates", () => {
    const required = [
      "usd", "eur", "gbp", "cad", "aud", "jpy", "chf", "sek", "nok", "dkk", "nzd", "sgd", "hkd",
      "mxn", "brl", "inr", "krw", "pln", "czk", "bhd", "kwd", "jod", "omr", "tnd",
    ];
    for (const c of required) expect(DEFAULT_USD_MICROS_PER_MAJOR_UNIT[c]).toBeDefined();
    for (const [code, rate] of Object.entries(DEFAULT_USD_MICROS_PER_MAJOR_UNIT)) {
      expect(code).toMatch(/^[a-z]{3}$/);
      expect(Number.isSafeInteger(rate) && rate > 0).toBe(true);
    }
  });

  test("is frozen", () => {
    expect(Object.isFrozen(DEFAULT_USD_MICROS_PER_MAJOR_UNIT)).toBe(true);
  });
});
