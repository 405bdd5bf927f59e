-- GET of one fixed list URL (path=...): the first page, or page 100 by its
-- cursor (the peer: by its offset).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local path

function init(args)
  path = prepare(args, {}).path
end

function request()
  -- Formatted per request: with keys=1 each request carries the next key.
  return get_path(path)
end
