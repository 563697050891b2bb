import type { PropsWithChildren } from "@kitajs/html";
import type { DailySeries } from "../src/domain/spend-series.ts";
import { usdMicros, utc } from "./format.ts";

/**
 * Server-rendered SVG charts: no chart library, no script, no inline style
 * (colours come from classes in admin.css, so the CSP holds).
 */

const W = 880;
const H = 260;
const PAD = { left: 84, right: 16, top: 14, bottom: 30 };
const plotW = W - PAD.left - PAD.right;
const plotH = H - PAD.top - PAD.bottom;

/** A round number ≥ value for the top of the axis (1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8 × 10ⁿ: quarters stay round). */
export function niceCeil(value: number): number {
  if (value <= 0) return 1;
  const exp = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 1.2, 1.6, 2, 2.4, 3, 4, 5, 6, 8, 10]) if (m * exp >= value) return m * exp;
  return 10 * exp;
}

function YAxis({ top }: { top: number }) {
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return (
    <g class="axis y">
      {ticks.map((t) => {
        const y = PAD.top + plotH - t * plotH;
        return (
          <g>
            <line x1={String(PAD.left)} x2={String(W - PAD.right)} y1={String(y)} y2={String(y)} class={t === 0 ? "baseline" : "grid"} />
            <text x={String(PAD.left - 8)} y={String(y + 4)} text-anchor="end" safe>
              {usdMicros(Math.round(top * t))}
            </text>
          </g>
        );
      })}
    </g>
  );
}

/** The SVG both charts draw in: accessible title and description, and the money axis. */
function PlotFrame(p: PropsWithChildren<{ id: string; title: string; desc: string; top: number }>) {
  return (
    <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-labelledby={`${p.id}-title ${p.id}-desc`} preserveAspectRatio="xMidYMid meet">
      <title id={`${p.id}-title`} safe>
        {p.title}
      </title>
      <desc id={`${p.id}-desc`} safe>
        {p.desc}
      </desc>
      <YAxis top={p.top} />
      {p.children}
    </svg>
  );
}

/** Spend per UTC day, one stacked colour per run. */
export function DailySpendChart({ data, title }: { data: DailySeries; title: string }) {
  if (data.peak === 0) {
    return (
      <div class="empty chart-empty">
        <p safe>{`No settled spend in the last ${data.days.length === 1 ? "day" : `${data.days.length} days`}.`}</p>
        <p class="small">Spend appears here once a vault key's calls settle.</p>
      </div>
    );
  }
  const top = niceCeil(data.peak);
  const n = data.days.length;
  const band = plotW / n;
  const barW = Math.max(2, band * 0.68);
  const total = data.series.reduce((s, x) => s + x.total, 0);
  return (
    <figure class="chart daily">
      <PlotFrame
        id="daily"
        title={title}
        desc={`${usdMicros(total)} settled over ${n} days across ${data.series.length} series; highest day ${usdMicros(data.peak)}.`}
        top={top}
      >
        <g class="bars">
          {data.days.map((day, i) => {
            let acc = 0;
            const x = PAD.left + i * band + (band - barW) / 2;
            return (
              <g>
                {data.series.map((s, si) => {
                  const m = s.micros[i]!;
                  if (!m) return "";
                  const h = (m / top) * plotH;
                  const y = PAD.top + plotH - ((acc + m) / top) * plotH;
                  acc += m;
                  return (
                    <rect x={x.toFixed(1)} y={y.toFixed(1)} width={barW.toFixed(1)} height={Math.max(1, h).toFixed(1)} class={`s${Math.min(si, 6)}`}>
                      <title safe>{`${day} · ${s.label || "(no label)"}: ${usdMicros(m)}`}</title>
                    </rect>
                  );
                })}
              </g>
            );
          })}
        </g>
        <g class="axis x">
          {data.days.map((day, i) =>
            (n - 1 - i) % dayLabelEvery(n) === 0 ? (
              <text x={(PAD.left + i * band + band / 2).toFixed(1)} y={String(H - 8)} text-anchor={i === n - 1 && n > 7 ? "end" : "middle"} safe>
                {i === n - 1 ? "today" : day.slice(5)}
              </text>
            ) : (
              ""
            ),
          )}
        </g>
      </PlotFrame>
      {data.series.length ? (
        <figcaption>
          <ul class="legend">
            {data.series.map((s, si) => (
              <li>
                <svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">
                  <rect width="10" height="10" rx="2" class={`s${Math.min(si, 6)}`} />
                </svg>
                <span class="label-text" safe>
                  {s.label || "(no label)"}
                </span>{" "}
                <span class="muted" safe>
                  {usdMicros(s.total)}
                </span>
              </li>
            ))}
          </ul>
        </figcaption>
      ) : (
        ""
      )}
    </figure>
  );
}

/** Day labels on the x axis: every day for a week, then spaced so they never overlap (counted back from today). */
function dayLabelEvery(days: number): number {
  return days <= 7 ? 1 : days <= 31 ? 7 : 14;
}

const TICK_STEPS_MS = [1000, 5000, 10_000, 30_000, 60_000, 5 * 60_000, 15 * 60_000, 30 * 60_000, 3_600_000, 3 * 3_600_000, 6 * 3_600_000, 12 * 3_600_000, 86_400_000, 2 * 86_400_000, 7 * 86_400_000];

/** Round times between t0 and t1 (UTC), at most `max` of them, and how to write them. */
export function timeTicks(t0: number, t1: number, max = 6): { t: number; text: string }[] {
  const span = Math.max(1, t1 - t0);
  const step = TICK_STEPS_MS.find((s) => span / s <= max) ?? Math.ceil(span / max / 86_400_000) * 86_400_000;
  const ticks: { t: number; text: string }[] = [];
  for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
    const iso = new Date(t).toISOString();
    const text =
      step >= 86_400_000
        ? iso.slice(5, 10)
        : step < 60_000
          ? iso.slice(11, 19)
          : span > 86_400_000 || iso.slice(11, 16) === "00:00"
            ? `${iso.slice(5, 10)} ${iso.slice(11, 16)}`
            : iso.slice(11, 16);
    ticks.push({ t, text });
  }
  // Under a couple of seconds there is nothing round to mark: label both ends instead.
  if (ticks.length < 2) return [t0, t1].map((t) => ({ t, text: new Date(t).toISOString().slice(11, 19) }));
  return ticks;
}

/** A run's running total: a step line, since money moves call by call, under its cap. */
export function CumulativeChart({ points, title, cap }: { points: { t: number; micros: number }[]; title: string; cap?: { micros: number; kind: "daily" | "lifetime" } }) {
  if (!points.length) {
    return (
      <div class="empty chart-empty">
        <p>No settled calls for this run in the window.</p>
        {cap ? <p class="small" safe>{`Its ${cap.kind} cap is ${usdMicros(cap.micros)}.`}</p> : ""}
      </div>
    );
  }
  const first = points[0]!.t;
  const last = points[points.length - 1]!.t;
  // One call (or calls in one instant) still needs a width to draw on.
  const t0 = first === last ? first - 60_000 : first;
  const t1 = first === last ? last + 60_000 : last;
  const total = points[points.length - 1]!.micros;
  const top = niceCeil(Math.max(total, cap?.micros ?? 0) * 1.05);
  const x = (t: number) => PAD.left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (m: number) => PAD.top + plotH - (m / top) * plotH;
  let d = `M${x(t0).toFixed(1)},${y(0).toFixed(1)}`;
  for (const p of points) d += ` H${x(p.t).toFixed(1)} V${y(p.micros).toFixed(1)}`;
  const area = `${d} H${x(t1).toFixed(1)} V${y(0).toFixed(1)} Z`;
  const capText = cap ? `${cap.kind} cap ${usdMicros(cap.micros)}` : "";
  return (
    <figure class="chart">
      <PlotFrame
        id="run"
        title={title}
        desc={`${usdMicros(total)} settled between ${utc(first)} and ${utc(last)}${cap ? `, against a ${capText}` : ""}.`}
        top={top}
      >
        <path d={area} class="area" />
        <path d={d} class="line" />
        {cap ? (
          <g class="cap">
            <line x1={String(PAD.left)} x2={String(W - PAD.right)} y1={y(cap.micros).toFixed(1)} y2={y(cap.micros).toFixed(1)} class="cap-line" />
            <text x={String(W - PAD.right - 4)} y={(y(cap.micros) - 6).toFixed(1)} text-anchor="end" class="cap-text" safe>
              {capText}
            </text>
          </g>
        ) : (
          ""
        )}
        {points.length <= 80
          ? points.map((p) => (
              <circle cx={x(p.t).toFixed(1)} cy={y(p.micros).toFixed(1)} r="3" class="dot">
                <title safe>{`${utc(p.t)}: ${usdMicros(p.micros)} so far`}</title>
              </circle>
            ))
          : ""}
        <g class="axis x">
          {timeTicks(t0, t1).map((tick) => (
            <g>
              <line x1={x(tick.t).toFixed(1)} x2={x(tick.t).toFixed(1)} y1={String(PAD.top + plotH)} y2={String(PAD.top + plotH + 4)} class="baseline" />
              <text x={x(tick.t).toFixed(1)} y={String(H - 8)} text-anchor={x(tick.t) < PAD.left + 40 ? "start" : x(tick.t) > W - PAD.right - 40 ? "end" : "middle"} safe>
                {tick.text}
              </text>
            </g>
          ))}
        </g>
      </PlotFrame>
      <figcaption class="muted small">
        <strong safe>{`${usdMicros(total)} settled`}</strong>
        {cap ? <span safe>{` of its ${capText}`}</span> : ""}
        {" · times on the axis are UTC."}
      </figcaption>
    </figure>
  );
}
