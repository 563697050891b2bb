import type { AuditRow } from "../db/schema.ts";
import { AUDIT_COLUMNS, presentAudit, toCsvLine } from "../domain/audit.ts";

/**
 * Streams audit rows as CSV or JSON lines. Shared by GET /vault/audit and the
 * admin pages' export link, so both always produce the same file.
 */
export function auditExportResponse(rows: AsyncIterator<AuditRow>, format: "csv" | "jsonl"): Response {
  const encoder = new TextEncoder();
  const csv = format === "csv";
  const stream = new ReadableStream<Uint8Array>({
    start(c) {
      if (csv) c.enqueue(encoder.encode(toCsvLine(AUDIT_COLUMNS)));
    },
    async pull(c) {
      // A batch of lines per pull keeps memory flat however large the log is.
      let chunk = "";
      for (let i = 0; i < 500; i++) {
        const next = await rows.next();
        if (next.done) {
          if (chunk) c.enqueue(encoder.encode(chunk));
          c.close();
          return;
        }
        const entry = presentAudit(next.value);
        chunk += csv ? toCsvLine(AUDIT_COLUMNS.map((k) => entry[k])) : JSON.stringify(entry) + "\n";
      }
      c.enqueue(encoder.encode(chunk));
    },
    // A client that goes away ends the export: no further batches are read.
    async cancel() {
      await rows.return?.();
    },
  });
  return new Response(stream, {
    headers: {
      "content-type": csv ? "text/csv; charset=utf-8" : "application/x-ndjson",
      "content-disposition": `attachment; filename="keybrake-audit.${format}"`,
    },
  });
}
