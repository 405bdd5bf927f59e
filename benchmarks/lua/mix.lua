-- 80 % reads (40 % by id, 40 % by email), 10 % first list page, 5 % create,
-- 5 % update with If-Match (as update.lua).
-- The peer (flavor=seed) has no email lookup: its 40 % by email are by id
-- (80 % by id in all), and its first page is ?offset=0&limit=50.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local first_page = "/api/v1/users"

function init(args)
  prepare(args, {users = true, versions = true})
  if seed_flavor then
    first_page = "/api/v1/users/?offset=0&limit=50"
    get_by_email = get_by_id
  end
end

function request()
  local r = math.random(100)
  if r <= 40 then
    return get_by_id()
  elseif r <= 80 then
    return get_by_email()
  elseif r <= 90 then
    return get_path(first_page)
  elseif r <= 95 then
    return create()
  end
  return update()
end

function response(status, headers, body)
  count(status)
  track_update(status, body)
end
