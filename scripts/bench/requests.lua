-- wrk script for `make bench`: replays prepared requests and reports one JSON line.
--
--   wrk -t1 -c32 -d6s -s scripts/bench/requests.lua http://127.0.0.1:PORT -- REQUESTS_FILE
--
-- REQUESTS_FILE is written by scripts/bench.py, one item per line:
--   H <name>: <value>                 a header sent with every request (before any R line)
--   S                                 starts a slot (see below); absent: one shared slot
--   R <method> <path> <n>             a request, followed by its n-byte body and a newline
--
-- Without S lines the requests are handed out round-robin in the file's order, each formatted
-- once in init(). With S lines every slot (one task) has its own cycle of requests, e.g.
-- "-> in_progress", "-> todo", and a slot is never in flight twice: request() takes the next
-- slot round-robin, skipping slots whose previous request has not been answered yet. Requests
-- are matched to slots by their X-Request-ID, which the API echoes. So each task's status
-- alternates whatever the latencies (in-order issue alone would not guarantee that: one slow
-- response can stay in flight while the other connections go round a whole pool).
--
-- done() prints "BENCH_RESULT {json}": counts, error classes (wrk counts every response with a
-- status of 400 or more as a `status` error), latency percentiles in microseconds and, for
-- slots, how often a busy slot had to be reused anyway (`overlaps`, 0 unless the pool is smaller
-- than the number of connections) and responses that matched no slot (`unmatched`).

local slots = {} -- slots[i] = { requests = {...}, next = 0 }
local exclusive = false
local busy = {} -- slot index -> true while its request is in flight
local cursor = 0
overlaps = 0 -- globals, so that done() can read them through thread:get()
unmatched = 0

local function read_requests(path)
   local file = assert(io.open(path, "rb"), "cannot open requests file " .. tostring(path))
   local headers = { Host = wrk.headers["Host"] }
   local slot = nil
   while true do
      local line = file:read("*l")
      if line == nil then
         break
      end
      if line:sub(1, 2) == "H " then
         local name, value = line:match("^H ([^:]+): (.*)$")
         headers[name] = value
      elseif line == "S" then
         exclusive = true
         slot = { requests = {}, next = 0 }
         slots[#slots + 1] = slot
      elseif line:sub(1, 2) == "R " then
         local method, target, length = line:match("^R (%S+) (%S+) (%d+)$")
         length = tonumber(length)
         local body = nil
         if length > 0 then
            body = file:read(length)
         end
         file:read("*l") -- the newline after the body
         if slot == nil then
            slot = { requests = {}, next = 0 }
            slots[1] = slot
         end
         local own = {}
         for name, value in pairs(headers) do
            own[name] = value
         end
         if exclusive then
            own["X-Request-ID"] = "bench-slot-" .. #slots
         end
         slot.requests[#slot.requests + 1] = wrk.format(method, target, own, body)
      else
         error("bad line in requests file: " .. line)
      end
   end
   file:close()
   assert(#slots > 0 and #slots[1].requests > 0, "no requests in " .. path)
end

local function next_of(slot)
   slot.next = slot.next % #slot.requests + 1
   return slot.requests[slot.next]
end

-- Installed as response() only for slots (see init): it frees the answered request's slot.
local function slot_response(_, headers, _)
   local id = headers["x-request-id"] or headers["X-Request-ID"]
   local index = id and tonumber(id:match("^bench%-slot%-(%d+)$"))
   if index and busy[index] then
      busy[index] = nil
   else
      unmatched = unmatched + 1
   end
end

function init(args)
   read_requests(args[1])
   if exclusive then
      -- wrk looks for a global response() after init(): without slots it is never defined, so
      -- wrk neither parses headers nor keeps bodies for Lua.
      response = slot_response
   end
end

function request()
   if not exclusive then
      return next_of(slots[1])
   end
   for _ = 1, #slots do
      cursor = cursor % #slots + 1
      if not busy[cursor] then
         busy[cursor] = true
         return next_of(slots[cursor])
      end
   end
   overlaps = overlaps + 1 -- every slot is busy: more connections than slots
   cursor = cursor % #slots + 1
   return next_of(slots[cursor])
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, _)
   local overlapped, unanswered = 0, 0
   for _, thread in ipairs(threads) do
      overlapped = overlapped + (thread:get("overlaps") or 0)
      unanswered = unanswered + (thread:get("unmatched") or 0)
   end
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, '
         .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
         .. '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}, '
         .. '"slots": {"overlaps": %d, "unmatched": %d}}\n',
      summary.requests, summary.duration, summary.bytes,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, latency.mean, overlapped, unanswered
   ))
end
