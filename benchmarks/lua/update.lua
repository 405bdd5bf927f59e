-- PATCH /api/v1/users/{id} with If-Match: the version this thread last saw.
-- Each thread owns its own users and has one request in flight per user, so
-- a 412 would mean a real lost update; they are counted apart from errors.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  prepare(args, {versions = true})
end

function request()
  return update()
end

function response(status, headers, body)
  count(status)
  track_update(status, body)
end
