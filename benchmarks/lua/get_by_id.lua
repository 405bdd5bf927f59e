-- GET /api/v1/users/{id} for a random seeded user.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

function init(args)
  prepare(args, {users = true})
end

function request()
  return get_by_id()
end
