-- GET of one fixed list URL (path=...): the first page, or page 100 by its cursor.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local req

function init(args)
  local a = prepare(args, {})
  req = get_path(a.path)
end

function request()
  return req
end
