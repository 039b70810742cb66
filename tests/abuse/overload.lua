-- wrk script: POST a small chat completion with a bearer key; count statuses, and 429s
-- without Retry-After. Key and body come from the environment (ABUSE_KEY, ABUSE_BODY).
wrk.method = "POST"
wrk.body = os.getenv("ABUSE_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("ABUSE_KEY")

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  codes = {}
  no_retry_after = 0
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
  if status == 429 and headers["retry-after"] == nil and headers["Retry-After"] == nil then
    no_retry_after = no_retry_after + 1
  end
end

function done(summary, latency, requests)
  local agg, nra = {}, 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("codes")) do agg[k] = (agg[k] or 0) + v end
    nra = nra + t:get("no_retry_after")
  end
  local parts = {}
  for k, v in pairs(agg) do table.insert(parts, string.format('"%d": %d', k, v)) end
  local e = summary.errors
  io.write(string.format(
    'ABUSE_RESULT {"codes": {%s}, "no_retry_after": %d, "requests": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, "p99_ms": %.1f}\n',
    table.concat(parts, ", "), nra, summary.requests, e.connect, e.read, e.write, e.timeout,
    latency:percentile(99) / 1000))
end
