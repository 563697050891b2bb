/**
 * In-process counters for /metrics (Prometheus text format). Each process
 * reports its own; the ledger in SQLite is the shared truth.
 */
const LATENCY_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class Metrics {
  private readonly requests = new Map<string, number>();
  private readonly spend = new Map<string, number>();
  private readonly latency = new Map<string, { buckets: number[]; sum: number; count: number }>();

  countRequest(vendor: string, outcome: string): void {
    const k = `vendor="${vendor}",outcome="${outcome}"`;
    this.requests.set(k, (this.requests.get(k) ?? 0) + 1);
  }

  addSpend(vendor: string, micros: number): void {
    if (micros > 0) this.spend.set(vendor, (this.spend.get(vendor) ?? 0) + micros);
  }

  observeUpstream(vendor: string, seconds: number): void {
    let h = this.latency.get(vendor);
    if (!h) this.latency.set(vendor, (h = { buckets: LATENCY_BUCKETS_S.map(() => 0), sum: 0, count: 0 }));
    LATENCY_BUCKETS_S.forEach((le, i) => {
      if (seconds <= le) h.buckets[i]!++;
    });
    h.sum += seconds;
    h.count++;
  }

  render(gauges: Record<string, number>, counters: Record<string, number> = {}): string {
    const lines: string[] = [];
    lines.push("# HELP keybrake_proxy_requests_total Proxied requests by vendor and outcome.", "# TYPE keybrake_proxy_requests_total counter");
    for (const [labels, n] of this.requests) lines.push(`keybrake_proxy_requests_total{${labels}} ${n}`);
    lines.push("# HELP keybrake_cap_hits_total Requests refused because a cap was reached.", "# TYPE keybrake_cap_hits_total counter");
    let capHits = 0;
    for (const [labels, n] of this.requests) if (labels.includes('outcome="cap_hit"')) capHits += n;
    lines.push(`keybrake_cap_hits_total ${capHits}`);
    lines.push("# HELP keybrake_spend_usd_total Settled spend through this process, in USD.", "# TYPE keybrake_spend_usd_total counter");
    for (const [vendor, micros] of this.spend) lines.push(`keybrake_spend_usd_total{vendor="${vendor}"} ${micros / 1e6}`);
    lines.push("# HELP keybrake_upstream_duration_seconds Vendor response time.", "# TYPE keybrake_upstream_duration_seconds histogram");
    for (const [vendor, h] of this.latency) {
      LATENCY_BUCKETS_S.forEach((le, i) => lines.push(`keybrake_upstream_duration_seconds_bucket{vendor="${vendor}",le="${le}"} ${h.buckets[i]}`));
      lines.push(`keybrake_upstream_duration_seconds_bucket{vendor="${vendor}",le="+Inf"} ${h.count}`);
      lines.push(`keybrake_upstream_duration_seconds_sum{vendor="${vendor}"} ${h.sum}`);
      lines.push(`keybrake_upstream_duration_seconds_count{vendor="${vendor}"} ${h.count}`);
    }
    for (const [name, value] of Object.entries(gauges)) lines.push(`# TYPE ${name} gauge`, `${name} ${value}`);
    for (const [name, value] of Object.entries(counters)) lines.push(`# TYPE ${name} counter`, `${name} ${value}`);
    return lines.join("\n") + "\n";
  }
}
