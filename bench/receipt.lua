-- wrk script: POST the seed envelope with a unique MessageIdentifier per request.
--
--   wrk -t1 -c16 -d10s --timeout 10s -s bench/receipt.lua http://127.0.0.1:8099/ -- tests/envelopes/seed.xml RUN
--   (add -H 'Connection: close' for a new connection per receipt, the provider's HTTP/1.0 way)
--
-- Arguments after "--": the seed envelope's path (default tests/envelopes/seed.xml) and a short
-- run tag (base36, default from the clock) so ids never repeat across runs against one database.
-- MessageIdentifier = "B" .. tag(3) .. thread(2) .. counter(base36), at most 15 characters; the
-- unique key is MessageIdentifier+SentTo+Report+Timestamp1, so every request is a new receipt.
--
-- response() counts 200 answers carrying Report 0 ("ok") apart from everything else ("bad"),
-- and done() prints one line "BENCH_JSON {...}" that bench/run.py parses.

local threads = {}
local next_thread = 0

function setup(thread)
   next_thread = next_thread + 1
   thread:set("tid", next_thread)
   table.insert(threads, thread)
end

local DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

local function base36(n, width)
   local out = ""
   repeat
      local d = n % 36
      out = DIGITS:sub(d + 1, d + 1) .. out
      n = math.floor(n / 36)
   until n == 0
   while width and #out < width do out = "0" .. out end
   return out
end

local prefix, suffix, id_head
local counter = 0
ok, bad, bad_status, bad_report = 0, 0, 0, 0
sample_bad = ""

function init(args)
   local path = args[1] or "tests/envelopes/seed.xml"
   local file = assert(io.open(path, "rb"), "cannot open the seed envelope " .. path)
   local seed = file:read("*a")
   file:close()
   local open_tag = '<MessageIdentifier xsi:type="xsd:string">'
   local first, last = seed:find(open_tag, 1, true)
   assert(first, "no MessageIdentifier element in " .. path)
   local close_at = seed:find("</MessageIdentifier>", last + 1, true)
   prefix = seed:sub(1, last)
   suffix = seed:sub(close_at)
   local tag = args[2] or base36(os.time() % 46656, 3)
   id_head = "B" .. tag:sub(1, 3) .. base36(tid or 0, 2)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "text/soap"
end

function request()
   counter = counter + 1
   local body = prefix .. id_head .. base36(counter) .. suffix
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   if status == 200 and body and body:find('<Report xsi:type="xsd:int">0</Report>', 1, true) then
      ok = ok + 1
   else
      bad = bad + 1
      if status ~= 200 then bad_status = bad_status + 1 else bad_report = bad_report + 1 end
      if sample_bad == "" then sample_bad = tostring(status) .. " " .. tostring(body):sub(1, 300) end
   end
end

local function json_string(s)
   return '"' .. s:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
   local total_ok, total_bad, total_status, total_report, sample = 0, 0, 0, 0, ""
   for _, thread in ipairs(threads) do
      total_ok = total_ok + thread:get("ok")
      total_bad = total_bad + thread:get("bad")
      total_status = total_status + thread:get("bad_status")
      total_report = total_report + thread:get("bad_report")
      if sample == "" then sample = thread:get("sample_bad") end
   end
   local e = summary.errors
   local seconds = summary.duration / 1e6
   io.write(string.format(
      "latency p50 %.2f ms  p90 %.2f ms  p99 %.2f ms  max %.2f ms; %d requests, %d ok (Report 0), %d bad, %.0f ok/s\n",
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000, summary.requests, total_ok, total_bad, total_ok / seconds))
   io.write(string.format(
      'BENCH_JSON {"duration_s":%.6f,"requests":%d,"ok":%d,"bad":%d,"bad_status":%d,"bad_report":%d,'
         .. '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"p999_ms":%.3f,"max_ms":%.3f,"mean_ms":%.3f,'
         .. '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,"err_timeout":%d,"sample_bad":%s}\n',
      seconds, summary.requests, total_ok, total_bad, total_status, total_report,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency:percentile(99.9) / 1000, latency.max / 1000, latency.mean / 1000,
      e.connect, e.read, e.write, e.status, e.timeout, json_string(sample)))
end
