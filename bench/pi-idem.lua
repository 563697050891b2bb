-- wrk load shaped like stripe-node's real traffic: the $29 PaymentIntent of pi.lua, plus a fresh
-- Idempotency-Key on every request (stripe-node sends one on every v1 POST: "stripe-node-retry-"
-- and a UUID), so each call takes Keybrake's repeat-guard path and leaves an idempotency record.
--
-- Usage: wrk -t1 -cN -dS -s bench/pi-idem.lua http://127.0.0.1:PORT/v1/payment_intents -- <vault key>

dofile((debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./") .. "pi.lua")

local prefix
local n = 0

function init(args)
  wrk.headers["Authorization"] = "Bearer " .. (args[1] or "vk_unset")
  -- Unique across wrk threads and runs: a random run prefix, then a counter per thread.
  math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)") or "0", 16))
  prefix = string.format("stripe-node-retry-%08x-%04x-", math.random(0, 0x7fffffff), math.random(0, 0xffff))
end

function request()
  n = n + 1
  wrk.headers["Idempotency-Key"] = prefix .. n
  return wrk.format()
end
