import type { DailySeries } from "../src/domain/spend-series.ts";
import { CumulativeChart, DailySpendChart } from "./chart.tsx";
import { href, usd } from "./format.ts";
import { Layout } from "./layout.tsx";

export interface RunTotal {
  agent_run_label: string | null;
  spent_usd: number;
  reserved_usd: number;
  calls: number;
  cap_hits: number;
}

export interface SpendPageData {
  csrf: string;
  days: number;
  windows: readonly number[];
  now: number;
  /** The chosen run's cap (the sum over its keys), drawn as a line on its chart. */
  runCap?: { usd: number; kind: "daily" | "lifetime" };
  label?: string;
  daily: DailySeries;
  runs: RunTotal[];
  /** The chosen run's running total, when a label is chosen. */
  runPoints?: { t: number; micros: number }[];
}

export function SpendPage(p: SpendPageData) {
  return (
    <Layout title="Spend" section="spend" csrf={p.csrf}>
      <div class="page-head">
        <div>
          <h1>Spend</h1>
          <p class="lede">{`Settled spend over the last ${windowText(p.days)} (UTC days), per day and per run.`}</p>
        </div>
      </div>

      <nav class="tabs" aria-label="Time window">
        {p.windows.map((d) => (
          <a href={href("/admin/spend", { label: p.label, days: d })} aria-current={d === p.days ? "page" : undefined}>
            {d === 1 ? "Today" : `${d} days`}
          </a>
        ))}
      </nav>

      <form class="filters" method="get" action="/admin/spend" role="search" aria-label="Choose a run">
        <input type="hidden" name="days" value={String(p.days)} />
        <div class="field wide">
          <label for="spend-label">Run label</label>
          <input id="spend-label" name="label" type="text" list="spend-labels" value={p.label} placeholder="all runs, or airflow-billing/*" autocomplete="off" spellcheck="false" />
          <datalist id="spend-labels">
            {p.runs.map((r) => (r.agent_run_label ? <option value={r.agent_run_label} /> : ""))}
          </datalist>
        </div>
        <div class="filter-actions">
          <button class="btn" type="submit">
            Show
          </button>
          {p.label !== undefined ? (
            <a class="btn ghost" href={href("/admin/spend", { days: p.days })}>
              All runs
            </a>
          ) : (
            ""
          )}
        </div>
      </form>

      {p.label !== undefined ? (
        <section class="card" aria-labelledby="run-h">
          <h2 id="run-h">
            Run <span class="label-text" safe>{`“${p.label}”`}</span> over time
          </h2>
          <CumulativeChart
            points={p.runPoints ?? []}
            title={`Running total of settled spend for run ${p.label}`}
            cap={p.runCap ? { micros: Math.round(p.runCap.usd * 1_000_000), kind: p.runCap.kind } : undefined}
          />
          <p class="muted small">
            <a href={href("/admin/audit", { label: p.label })}>See this run's calls in the audit log</a>
          </p>
        </section>
      ) : (
        ""
      )}

      <section class="card" aria-labelledby="daily-h">
        <h2 id="daily-h">{p.label !== undefined ? "Per day" : "Per day, by run"}</h2>
        <DailySpendChart data={p.daily} title={`Settled spend per day over the last ${windowText(p.days)}`} />
      </section>

      <section class="card flush" aria-labelledby="runs-h">
        <h2 id="runs-h" class="pad">
          {`Runs in the last ${windowText(p.days)}`}
        </h2>
        {p.runs.length ? (
          <div class="table-wrap">
            <table class="data cardify spend-runs">
              <thead>
                <tr>
                  <th scope="col">Run label</th>
                  <th scope="col" class="num">
                    Settled
                  </th>
                  <th scope="col" class="num">
                    Reserved / unsettled
                  </th>
                  <th scope="col" class="num">
                    Calls
                  </th>
                  <th scope="col" class="num">
                    Cap hits
                  </th>
                </tr>
              </thead>
              <tbody>
                {p.runs.map((r) => (
                  <tr>
                    <td class="run">
                      <a class="label-text" href={href("/admin/spend", { label: r.agent_run_label ?? "", days: p.days })} safe>
                        {r.agent_run_label ?? "(no label)"}
                      </a>
                    </td>
                    <td class="num" data-label="Settled" safe>
                      {usd(r.spent_usd)}
                    </td>
                    <td class="num" data-label="Reserved / unsettled" safe>
                      {usd(r.reserved_usd)}
                    </td>
                    <td class="num" data-label="Calls" safe>
                      {String(r.calls)}
                    </td>
                    <td class="num" data-label="Cap hits" safe>
                      {String(r.cap_hits)}
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        ) : (
          <p class="pad muted">{`No calls in the last ${windowText(p.days)}.`}</p>
        )}
      </section>
    </Layout>
  );
}

function windowText(days: number): string {
  return days === 1 ? "day" : `${days} days`;
}
