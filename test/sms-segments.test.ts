import { describe, expect, test } from "bun:test";
import { countSmsSegments } from "../src/vendors/sms-segments.ts";

describe("countSmsSegments: GSM-7", () => {
  test("empty body is still one billed segment", () => {
    expect(countSmsSegments("")).toEqual({ encoding: "GSM-7", segments: 1, units: 0 });
  });

  test("160 septets fit one segment, 161 need two", () => {
    expect(countSmsSegments("a".repeat(160))).toEqual({ encoding: "GSM-7", segments: 1, units: 160 });
    expect(countSmsSegments("a".repeat(161))).toEqual({ encoding: "GSM-7", segments: 2, units: 161 });
  });

  test("multipart segments hold 153 septets", () => {
    expect(countSmsSegments("a".repeat(306)).segments).toBe(2);
    expect(countSmsSegments("a".repeat(307)).segments).toBe(3);
  });

  test("every basic-table character is GSM-7 at one septet", () => {
    const basic =
      "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?" +
      "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    expect(countSmsSegments(basic)).toEqual({ encoding: "GSM-7", segments: 1, units: basic.length });
  });

  test("é is in the GSM basic table, so 70 of them stay GSM-7", () => {
    expect(countSmsSegments("é".repeat(70))).toEqual({ encoding: "GSM-7", segments: 1, units: 70 });
  });

  test("extension characters count two septets", () => {
    for (const ch of ["^", "{", "}", "\\", "[", "~", "]", "|", "€", "\f"]) {
      expect(countSmsSegments(ch)).toEqual({ encoding: "GSM-7", segments: 1, units: 2 });
    }
  });

  test("80 '€' are 160 septets in one segment, 81 need two", () => {
    expect(countSmsSegments("€".repeat(80))).toEqual({ encoding: "GSM-7", segments: 1, units: 160 });
    expect(countSmsSegments("€".repeat(81))).toEqual({ encoding: "GSM-7", segments: 2, units: 162 });
  });

  test("an extension character is not split across segments", () => {
    // 152 + 2 + 152 = 306 septets: dividing would say 2 segments, but the '€'
    // in positions 153–154 moves whole into segment two, pushing one septet on.
    const body = "a".repeat(152) + "€" + "a".repeat(152);
    expect(countSmsSegments(body)).toEqual({ encoding: "GSM-7", segments: 3, units: 306 });
  });

  test("the 153rd character being '€' spills it to the next segment", () => {
    const body = "a".repeat(152) + "€" + "a".repeat(151);
    // Segment one: 152 'a'; segment two: '€' + 151 'a' = 153.
    expect(countSmsSegments(body)).toEqual({ encoding: "GSM-7", segments: 2, units: 305 });
    expect(countSmsSegments(body + "a").segments).toBe(3);
  });
});

describe("countSmsSegments: UCS-2", () => {
  test("70 UTF-16 units fit one segment, 71 need two", () => {
    expect(countSmsSegments("Ж".repeat(70))).toEqual({ encoding: "UCS-2", segments: 1, units: 70 });
    expect(countSmsSegments("Ж".repeat(71))).toEqual({ encoding: "UCS-2", segments: 2, units: 71 });
  });

  test("multipart segments hold 67 units", () => {
    expect(countSmsSegments("Ж".repeat(134)).segments).toBe(2);
    expect(countSmsSegments("Ж".repeat(135)).segments).toBe(3);
  });

  test("an emoji counts two units", () => {
    expect(countSmsSegments("😀")).toEqual({ encoding: "UCS-2", segments: 1, units: 2 });
    expect(countSmsSegments("😀".repeat(35))).toEqual({ encoding: "UCS-2", segments: 1, units: 70 });
    expect(countSmsSegments("😀".repeat(36))).toEqual({ encoding: "UCS-2", segments: 2, units: 72 });
  });

  test("one emoji forces the whole body to UCS-2", () => {
    const body = "a".repeat(100) + "😀";
    expect(countSmsSegments(body)).toEqual({ encoding: "UCS-2", segments: 2, units: 102 });
  });

  test("a character outside both GSM tables forces UCS-2", () => {
    expect(countSmsSegments("hello ç").encoding).toBe("UCS-2"); // lowercase ç is not GSM; Ç is
    expect(countSmsSegments("hello Ç").encoding).toBe("GSM-7");
  });

  test("a surrogate pair is not split across segments", () => {
    // 66 + 2 + 66 = 134 units: dividing would say 2 segments, but the emoji
    // straddling units 67–68 moves whole into segment two.
    const body = "Ж".repeat(66) + "😀" + "Ж".repeat(66);
    expect(countSmsSegments(body)).toEqual({ encoding: "UCS-2", segments: 3, units: 134 });
  });

  test("extension characters cost one unit once in UCS-2", () => {
    expect(countSmsSegments("€Ж")).toEqual({ encoding: "UCS-2", segments: 1, units: 2 });
  });
});
