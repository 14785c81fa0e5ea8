-- wrk script for every scenario of bench/bench.py.
-- wrk -s load.lua URL -- SCENARIO SEED START   (data file: env BENCH_DATA)
local data = dofile(os.getenv("BENCH_DATA"))
local scenario, start = "list", 1
local counter = 0
local next_path = nil
local json = '{"title":"bench task","description":"from wrk","priority":"high","tags":["bench"]}'

function init(args)
  scenario = args[1]
  math.randomseed(tonumber(args[2]))
  start = tonumber(args[3])
end

local function user_of(id) return math.floor((id - 1) / data.per_user) + 1 end

local function headers(u, body)
  local h = {["Authorization"] = "Bearer " .. data.tokens[u]}
  if body then h["Content-Type"] = "application/json" end
  return h
end

local function base(u) return "/api/u" .. u .. "/tasks" end

local function random_task()
  local u = math.random(1, data.users)
  return u, (u - 1) * data.per_user + math.random(1, data.per_user)
end

local builders = {}
builders.list = function()
  local u = math.random(1, data.users)
  return wrk.format("GET", base(u), headers(u))
end
builders.ceiling = function()
  local u = math.random(1, data.users)
  return wrk.format("GET", "/ceiling/u" .. u .. "/tasks", headers(u))
end
builders.get = function()
  local u, id = random_task()
  return wrk.format("GET", base(u) .. "/" .. id, headers(u))
end
builders.create = function()
  local u = math.random(1, data.users)
  return wrk.format("POST", base(u), headers(u, true), json)
end
builders.replace = function()
  local u, id = random_task()
  return wrk.format("PUT", base(u) .. "/" .. id, headers(u, true), json)
end
builders.toggle = function()
  local u, id = random_task()
  return wrk.format("PATCH", base(u) .. "/" .. id .. "/complete", headers(u))
end
builders.delete = function()
  local id = start + counter
  counter = counter + 1
  local u = user_of(id)
  return wrk.format("DELETE", base(u) .. "/" .. id, headers(u))
end
builders.mixed = function()
  local r = math.random(1, 100)
  if r <= 40 then return builders.list() end
  if r <= 80 then return builders.get() end
  if r <= 90 then return builders.create() end
  return builders.toggle()
end
builders.filtered = function()
  local u = math.random(1, data.users)
  return wrk.format("GET", base(u) .. "?completed=false&priority=high&sort=-due_at&limit=50", headers(u))
end
builders.search = function()
  local u = data.search_user
  return wrk.format("GET", base(u) .. "?q=" .. data.search_terms[math.random(1, #data.search_terms)] .. "&limit=100", headers(u))
end
builders.flood = function()  -- one user's cheapest read, from every connection
  local u = data.search_user
  return wrk.format("GET", base(u) .. "?limit=1", headers(u))
end
builders.pages = function()
  if next_path then
    local path = next_path
    next_path = nil
    local u = tonumber(string.match(path, "^/api/u(%d+)/"))
    return wrk.format("GET", path, headers(u))
  end
  local u = math.random(1, data.users)
  return wrk.format("GET", base(u) .. "?limit=10", headers(u))
end

function request() return builders[scenario]() end

function response(status, hdrs, body)
  if scenario == "pages" then
    local link = hdrs["Link"] or hdrs["link"]
    if link then next_path = string.match(link, "^<([^>]+)>") end
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "non2xx": %d, "socket_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, e.status,
    e.connect + e.read + e.write, e.timeout))
end
