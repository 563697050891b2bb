/**
 * SMS segment counting, as Twilio bills it (3GPP TS 23.038 / 23.040).
 *
 * A body that fits entirely in the GSM 03.38 default alphabet (basic table plus
 * its extension table) is sent as GSM-7; anything else forces UCS-2 for the
 * whole message. Multipart messages lose room per segment to the UDH header
 * (160 → 153 septets, 70 → 67 UTF-16 units), and a character is never split
 * across two segments, so segments are counted by greedy packing rather than
 * by dividing the total.
 */

export type SmsEncoding = "GSM-7" | "UCS-2";

/** GSM 03.38 basic character set: one septet each. (0x1B, ESC, is not a character.) */
const GSM7_BASIC = new Set<string>([
  ..."@£$¥èéùìòÇ\nØø\rÅå",
  ..."Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ",
  ...` !"#¤%&'()*+,-./`,
  ..."0123456789:;<=>?",
  ..."¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§",
  ..."¿abcdefghijklmnopqrstuvwxyzäöñüà",
]);

/** GSM 03.38 extension table: sent as ESC + char, so two septets each. */
const GSM7_EXTENSION = new Set<string>([..."\f^{}\\[~]|€"]);

const GSM7_SINGLE_SEGMENT = 160;
const GSM7_MULTI_SEGMENT = 153;
const UCS2_SINGLE_SEGMENT = 70;
const UCS2_MULTI_SEGMENT = 67;

/**
 * Encoding, billable segment count and total size in encoding units
 * (septets for GSM-7, UTF-16 code units for UCS-2) of an SMS body.
 */
export function countSmsSegments(body: string): { encoding: SmsEncoding; segments: number; units: number } {
  // Iterating a string yields code points, so an emoji (surrogate pair) is one
  // item of width 2 and can never be split by the packing below.
  const chars = [...body];

  const gsmWidths: number[] = [];
  for (const ch of chars) {
    if (GSM7_BASIC.has(ch)) gsmWidths.push(1);
    else if (GSM7_EXTENSION.has(ch)) gsmWidths.push(2);
    else break;
  }
  if (gsmWidths.length === chars.length) {
    return { encoding: "GSM-7", ...pack(gsmWidths, GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT) };
  }

  // A lone surrogate is a single item of length 1, which is also what it costs.
  const ucs2Widths = chars.map((ch) => ch.length);
  return { encoding: "UCS-2", ...pack(ucs2Widths, UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT) };
}

/** Greedily packs indivisible characters of the given widths into segments. */
function pack(widths: number[], singleCap: number, multiCap: number): { segments: number; units: number } {
  const units = widths.reduce((sum, w) => sum + w, 0);
  // Empty bodies are still sent, and billed, as one segment.
  if (units <= singleCap) return { segments: 1, units };

  let segments = 1;
  let used = 0;
  for (const w of widths) {
    if (used + w > multiCap) {
      segments++;
      used = 0;
    }
    used += w;
  }
  return { segments, units };
}
