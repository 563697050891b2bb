-- wrk load for every target: POST a $29 PaymentIntent the way stripe-node
-- does (form body, Authorization: Bearer <key>).
--
-- Usage: wrk -t1 -cN -dS -s bench/pi.lua http://127.0.0.1:PORT/v1/payment_intents -- <vault key>
-- The key goes in after `--`; the targets without a ledger ignore it.
--
-- done() prints one machine-readable line, WRK_RESULT, that bench/load.ts parses.

wrk.method = "POST"
wrk.body = "amount=2900&currency=usd"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

function init(args)
  -- Runs in each wrk thread before the request is built (wrk.format() follows init).
  wrk.headers["Authorization"] = "Bearer " .. (args[1] or "vk_unset")
end

function done(summary, latency, requests)
  local e = summary.errors
  -- wrk counts a response with status > 399 as errors.status; the fake vendors
  -- never answer 1xx/3xx, so every other completed response is a 2xx. Counting
  -- this way avoids a response() hook, which would slow wrk down for every call.
  local ok = summary.requests - e.status
  io.write(string.format(
    "WRK_RESULT requests=%d ok2xx=%d non2xx=%d connect=%d read=%d write=%d timeout=%d " ..
    "duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, ok, e.status, e.connect, e.read, e.write, e.timeout,
    summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
