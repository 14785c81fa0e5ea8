-- wrk script for bench/capacity.py: users on their own keep-alive connections who
-- list, get and toggle in turn, each request after an exponential think time.
-- wrk -s users.lua URL -- MEAN_THINK_MS SEED   (data file: env BENCH_DATA)
local data = dofile(os.getenv("BENCH_DATA"))
local think_ms = 1000
local step = 0
counts = {}  -- responses per wall-clock second (read by done() through each thread)
statuses = {}

local threads = {}
function setup(thread) table.insert(threads, thread) end

function init(args)
  think_ms = tonumber(args[1])
  math.randomseed(tonumber(args[2]))
end

local function headers(u)
  return {["Authorization"] = "Bearer " .. data.tokens[u]}
end

function request()
  step = step + 1
  local u = math.random(1, data.users)
  local base = "/api/u" .. u .. "/tasks"
  local id = (u - 1) * data.per_user + math.random(1, data.per_user)
  local kind = step % 3
  if kind == 0 then return wrk.format("GET", base, headers(u)) end
  if kind == 1 then return wrk.format("GET", base .. "/" .. id, headers(u)) end
  return wrk.format("PATCH", base .. "/" .. id .. "/complete", headers(u))
end

function delay()
  if think_ms == 0 then return 0 end
  return math.floor(-math.log(1 - math.random()) * think_ms)
end

function response(status, hdrs, body)
  local second = os.time()
  counts[second] = (counts[second] or 0) + 1
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local per_second, by_status = {}, {}
  for _, thread in ipairs(threads) do
    for second, n in pairs(thread:get("counts")) do
      per_second[second] = (per_second[second] or 0) + n
    end
    for status, n in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + n
    end
  end
  local first, last = nil, nil
  for second, _ in pairs(per_second) do
    if first == nil or second < first then first = second end
    if last == nil or second > last then last = second end
  end
  local series = {}
  if first then
    for s = first, last do table.insert(series, tostring(per_second[s] or 0)) end
  end
  local codes = {}
  for status, n in pairs(by_status) do
    table.insert(codes, string.format('"%d": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p95_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "non2xx": %d, "connect_errors": %d, "socket_errors": %d, "timeouts": %d, "per_second": [%s], "statuses": {%s}}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    e.status, e.connect, e.connect + e.read + e.write, e.timeout,
    table.concat(series, ","), table.concat(codes, ",")))
end
