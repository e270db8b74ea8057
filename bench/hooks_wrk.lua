-- wrk request generator for the webhook intake benchmark (bench/hooks.py).
--
-- Every request is `POST HOOKS_PATH` with the same GitHub push body (read from the file
-- HOOKS_BODY, signed once: HOOKS_SIG is the whole `sha256=<hex>` value, GitHub signs only the
-- body) and a delivery id of its own, `X-GitHub-Delivery: <HOOKS_RUN>-<thread>-<n>`, so that no
-- request is a duplicate of another (a repeated id is answered 200 with "duplicate":true and
-- stores nothing). HOOKS_RUN must differ between two wrk runs against the same store.
--
-- Every response body is checked: 200 with "duplicate":false counts as stored (ok), 200 with
-- anything else as dup, any other status as other. When HOOKS_OUT names a directory, the
-- delivery id of every ok answer is written to HOOKS_OUT/acked-<run>-<thread>.txt, one a line,
-- so that the caller can check each acknowledged delivery against the store afterwards. At the
-- end one line per thread is printed:
--   HOOKS tid=0 sent=<requests generated> answered=<responses> ok=<n> dup=<n> other=<n>
-- (sent - answered: requests still in flight when wrk stopped; the server may have stored them.)
--
-- Example:
--   HOOKS_BODY=push.json HOOKS_SIG=sha256=... HOOKS_RUN=m \
--     wrk -t2 -c64 -d10s --latency -s bench/hooks_wrk.lua http://127.0.0.1:9090
local body_path = assert(os.getenv("HOOKS_BODY"), "HOOKS_BODY: the body file")
local file = assert(io.open(body_path, "rb"))
local body = file:read("*a")
file:close()
local signature = assert(os.getenv("HOOKS_SIG"), "HOOKS_SIG: sha256=<hex>")
local run = os.getenv("HOOKS_RUN") or "r"
local path = os.getenv("HOOKS_PATH") or "/hooks/gh"
local out_dir = os.getenv("HOOKS_OUT")

-- Globals, so that done() can read them with thread:get(); they exist in the main state too,
-- where wrk calls request() once to check it (that request is never sent).
prefix = run .. "-main-"
sent = 0
answered = 0
ok = 0
dup = 0
other = 0
local acked = nil
local headers = {
  ["Content-Type"] = "application/json",
  ["X-GitHub-Event"] = "push",
  ["X-Hub-Signature-256"] = signature,
}

local threads = {}

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = run .. "-" .. tid .. "-"
  if out_dir then
    acked = assert(io.open(out_dir .. "/acked-" .. run .. "-" .. tid .. ".txt", "w"))
  end
end

function request()
  sent = sent + 1
  headers["X-GitHub-Delivery"] = prefix .. sent
  return wrk.format("POST", path, headers, body)
end

function response(status, hdrs, resp)
  answered = answered + 1
  if status == 200 and resp:find('"duplicate":false', 1, true) then
    ok = ok + 1
    if acked then
      -- flushed when wrk exits (exit() flushes every stdio stream)
      acked:write(resp:match('"delivery":"([^"]*)"') or "?", "\n")
    end
  elseif status == 200 then
    dup = dup + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    io.write(string.format(
      "HOOKS tid=%d sent=%d answered=%d ok=%d dup=%d other=%d\n",
      t:get("tid"), t:get("sent"), t:get("answered"), t:get("ok"), t:get("dup"), t:get("other")
    ))
  end
end
