-- Shared by the scenario scripts (each loads it with dofile).
--
-- Arguments come after wrk's "--" as key=value pairs:
--   data=DIR     the harness's data files (users.txt, versions.txt)
--   tag=TEXT     unique per run: goes into created emails
--   threads=N    wrk's -t (to split the users to update between threads)
--   path=PATH    the list scenarios' URL path
--   keys=1       spread requests over the API keys of keys.txt (one per line),
--                a different key for each request in turn: the rate limits stay
--                at their defaults, counted per key, and are checked, not refused
--   flavor=seed  the reference peer (fastapi_seed): its collection is
--                /api/v1/users/ (trailing slash: without it FastAPI answers 307),
--                it has no versions (PATCH without If-Match, as application/json),
--                no email lookup, and offset paging
-- The bearer credentials come from the environment (BENCH_AUTHORIZATION), so
-- they never show in a process listing.
--
-- Every response is counted by status (412 apart from errors); done() prints
-- one line, "BENCH_JSON {...}", that the harness parses.

threads = {}  -- main state only: every thread, for done()
counts = {}   -- per thread: responses by status
tid = tid or 0  -- per thread, set by setup() before init()

function setup(thread)
  thread:set("tid", #threads)
  threads[#threads + 1] = thread
end

function parse_args(args)
  local out = {}
  for _, arg in ipairs(args) do
    local k, v = arg:match("^([%w_]+)=(.*)$")
    if k then
      out[k] = v
    end
  end
  return out
end

function read_lines(path)
  local lines = {}
  for line in io.lines(path) do
    if #line > 0 then
      lines[#lines + 1] = line
    end
  end
  return lines
end

local authorization = os.getenv("BENCH_AUTHORIZATION")

function make_headers(extra)
  local h = {}
  if authorization and #authorization > 0 then
    h["Authorization"] = authorization
  end
  for k, v in pairs(extra or {}) do
    h[k] = v
  end
  return h
end

function count(status)
  counts[status] = (counts[status] or 0) + 1
end

-- Building blocks ----------------------------------------------------------

local ids, emails, read_headers, json_headers, patch_headers
local prefix, created, updated = "", 0, 0
-- The collection's path: userplane's and the bare stack's, or the peer's.
local collection = "/api/v1/users"
-- A cheap answer holding no user (see update()).
local nobody = "/api/v1/users?email=nobody%40bench.example.org"
local versioned = true
-- Per-request API keys (keys=1), taken in turn from a per-thread start.
local keys, key_at = nil, 0
seed_flavor = false
-- Users this thread may update, as a FIFO of {id, version}: one request per
-- user at a time, with the version its last answer gave, so no 412 is expected.
local queue, head, tail, inflight = {}, 1, 0, {}

function prepare(args, what)
  local a = parse_args(args)
  math.randomseed(os.time() * 1000 + tid * 7919)
  read_headers = make_headers()
  json_headers = make_headers({["Content-Type"] = "application/json"})
  patch_headers = make_headers({["Content-Type"] = "application/merge-patch+json"})
  prefix = string.format("%s-%d-", a.tag or "run", tid)
  if a.flavor == "seed" then
    seed_flavor = true
    collection = "/api/v1/users/"
    nobody = "/api/v1/users/?offset=0&limit=1"
    versioned = false
    patch_headers = make_headers({["Content-Type"] = "application/json"})
  end
  if a.keys == "1" then
    keys = read_lines(a.data .. "/keys.txt")
    key_at = math.floor(#keys * tid / tonumber(a.threads or "1"))
  end
  local updatable = {}
  if what.versions then
    local nthreads = tonumber(a.threads or "1")
    for i, line in ipairs(read_lines(a.data .. "/versions.txt")) do
      local id, version = line:match("^(%S+)%s+(%d+)$")
      updatable[id] = true
      if (i - 1) % nthreads == tid then
        tail = tail + 1
        queue[tail] = {id, version}
      end
    end
  end
  if what.users then
    -- users.txt: "id url-encoded-email" per seeded user. With what.versions,
    -- users that may be updated are not read: a read of a user whose update
    -- is in flight would answer with a body track_update cannot tell apart.
    ids, emails = {}, {}
    for _, line in ipairs(read_lines(a.data .. "/users.txt")) do
      local id, email = line:match("^(%S+)%s+(%S+)$")
      if not (what.versions and updatable[id]) then
        ids[#ids + 1] = id
        emails[#emails + 1] = email
      end
    end
  end
  return a
end

-- The headers h with the next API key (keys=1), else as they are.
local function keyed(h)
  if keys then
    key_at = key_at % #keys + 1
    h["Authorization"] = "Bearer " .. keys[key_at]
  end
  return h
end

function get_by_id()
  return wrk.format("GET", "/api/v1/users/" .. ids[math.random(#ids)], keyed(read_headers))
end

function get_by_email()
  return wrk.format(
    "GET", "/api/v1/users?email=" .. emails[math.random(#emails)], keyed(read_headers)
  )
end

function get_path(path)
  return wrk.format("GET", path, keyed(read_headers))
end

function create()
  created = created + 1
  local body = string.format(
    '{"email":"%s%d@bench.example.org","full_name":"Created %d"}', prefix, created, created
  )
  return wrk.format("POST", collection, keyed(json_headers), body)
end

-- update() asks for a request whose answer holds no user (nobody) when every
-- user a thread may update is in flight (it cannot be with the seeded users
-- and 64 connections).
function update()
  if head > tail then
    return wrk.format("GET", nobody, keyed(read_headers))
  end
  local entry = queue[head]
  queue[head] = nil
  head = head + 1
  inflight[entry[1]] = entry[2]
  updated = updated + 1
  if versioned then
    patch_headers["If-Match"] = '"' .. entry[2] .. '"'
  end
  local body = string.format('{"full_name":"Updated %d"}', updated)
  return wrk.format("PATCH", "/api/v1/users/" .. entry[1], keyed(patch_headers), body)
end

-- Puts an updated user back in the queue with its new version. The answer to
-- an update is one user object (it starts with {"id": on userplane, the bare
-- stack and the peer alike) or a problem naming the user's path in "instance"; any other
-- body (a list page, which may hold a user being updated) is not one. A refused
-- update other than a 412 goes back with the version it had; a 412 user is dropped.
function track_update(status, body)
  if not body then
    return
  end
  local id = body:match('^{"id":"([%x%-]+)"') or body:match('"instance":"/api/v1/users/([%x%-]+)"')
  if not id or not inflight[id] then
    return
  end
  local version = inflight[id]
  inflight[id] = nil
  if status == 200 then
    version = body:match('"version":(%d+)') or version
  elseif status == 412 then
    return
  end
  tail = tail + 1
  queue[tail] = {id, version}
end

-- Default response handler: count only.
function response(status, headers, body)
  count(status)
end

function done(summary, latency, requests)
  local statuses = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(statuses) do
    parts[#parts + 1] = string.format('"%s":%d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, table.concat(parts, ",")
  ))
end
