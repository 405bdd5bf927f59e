-- POST /api/v1/users with an email unique to the run, thread and request.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  prepare(args, {})
end

function request()
  return create()
end
